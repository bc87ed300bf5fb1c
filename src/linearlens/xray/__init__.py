"""The chest X-ray study (anti-aliased, multi-label B-cos diagnosis with box-level evaluation)."""

from linearlens.xray.thresholds import RULES, ThresholdChoice, choose_thresholds

__all__ = ["RULES", "ThresholdChoice", "choose_thresholds"]
