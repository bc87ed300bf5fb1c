"""Training with BCE (Eq. (16) of the B-cos paper) and resumable safetensors checkpoints."""

from .checkpoint import load_checkpoint, save_model
from .trainer import TrainConfig, bce_loss, cosine_lr, evaluate_accuracy, train

__all__ = ["TrainConfig", "train", "bce_loss", "cosine_lr", "evaluate_accuracy", "load_checkpoint", "save_model"]
