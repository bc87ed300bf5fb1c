"""Weight-keeping conversion of trained classifiers to B-cos networks, and the fine-tuning schedule.

:func:`to_bcos` (:mod:`.convert`) replaces every convolution and linear layer of a torchvision VGG,
ResNet, DenseNet or ViT by a B-cos layer at ``B = 1`` that computes the trained layer exactly, with
biases, activations, max pooling and normalisation shifts kept as annealable, accounted terms.
:mod:`.schedule` raises B to 2 and anneals those terms away during fine-tuning.
"""

from .convert import UnconvertibleModuleError, to_bcos
from .schedule import assert_bcos_final, finalize_bcos, progress_at, set_bcosification

__all__ = [
    "to_bcos", "UnconvertibleModuleError", "set_bcosification", "finalize_bcos", "assert_bcos_final", "progress_at",
]
