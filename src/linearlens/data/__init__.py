"""Data loading for linearlens: in-memory image sets, CIFAR-10 loaders and tensor augmentation."""

from linearlens.data.cifar10 import (
    CIFAR10_CLASSES,
    AugmentedImageDataset,
    ImageSet,
    augment_batch,
    load_cifar10,
)

__all__ = [
    "CIFAR10_CLASSES",
    "AugmentedImageDataset",
    "ImageSet",
    "augment_batch",
    "load_cifar10",
]
