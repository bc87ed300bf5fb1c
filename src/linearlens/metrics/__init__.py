"""Metrics of explanation quality, as plain batched functions on tensors.

:mod:`.pointing_game`: grid pointing game (B-cos paper, Sec. 4 and App. C.2.1), energy-based
pointing game and its variants (chest X-ray paper, App. B), pointing game.
:mod:`.degradation`: pixel-flipping / degradation curves (PatternNet paper, Sec. 5).
:mod:`.artifact`: grid-artifact score of explanation maps (chest X-ray paper, Sec. 3.2, Fig. 2).
:mod:`.classification`: multi-label predictions and per-class / macro AUROC, F1 and friends.
"""

from .artifact import artifact_score
from .classification import classification_report, explain_labels, multi_hot, predicted_labels
from .degradation import area_under_curve, degradation_curve, patch_ranking
from .pointing_game import (
    Grids,
    energy_pointing_game,
    energy_pointing_game_sweep,
    grid_pointing_game,
    make_grids,
    pointing_game,
    smooth,
)

__all__ = [
    "Grids", "make_grids", "grid_pointing_game", "smooth", "energy_pointing_game", "energy_pointing_game_sweep",
    "pointing_game", "degradation_curve", "patch_ranking", "area_under_curve", "artifact_score",
    "multi_hot", "predicted_labels", "classification_report", "explain_labels",
]
