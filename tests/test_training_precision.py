"""Training precision (linearlens.training.precision): "auto" resolves from what the device computes
natively, bad values are refused, and the CLI and the trainer report what ran."""

from __future__ import annotations

import pytest
import torch

from linearlens.cli import build_parser
from linearlens.training import TrainConfig
from linearlens.training import precision as precision_module
from linearlens.training.precision import autocast_for, native_bfloat16, resolve_precision


@pytest.fixture
def cpu_flags(monkeypatch):
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(precision_module, "_cpu_flags", lambda: frozenset(flags))
    return set_flags


@pytest.mark.parametrize(("flags", "expected"), [
    (("avx2", "avx512f"), "fp32"), (("avx512f", "amx_bf16", "amx_tile"), "bf16"), (("avx512_bf16",), "bf16"),
    ((), "fp32"),
])
def test_auto_follows_the_cpu_flags(cpu_flags, flags, expected):
    cpu_flags(*flags)
    assert native_bfloat16("cpu") is (expected == "bf16")
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_autocast_for_enters_bfloat16_only_when_resolved_so(cpu_flags):
    cpu_flags("amx_bf16")
    with autocast_for("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    cpu_flags()
    with autocast_for("cpu", "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_for("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("bad", ["fp16", "half", "", "AUTO"])
def test_unknown_precisions_are_refused(bad):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        resolve_precision(bad)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision=bad).validate()


def test_the_real_cpu_flags_are_read():
    """On Linux the flags come from /proc/cpuinfo (this test only checks they are read, not which they are)."""
    flags = precision_module._cpu_flags()
    assert isinstance(flags, frozenset)
    if open("/proc/cpuinfo").read().count("flags"):
        assert flags


def test_cli_precision_defaults(capsys):
    parser = build_parser()
    assert parser.parse_args(["demo"]).precision == "auto"
    assert parser.parse_args(["train"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--precision", "fp16"])
    assert "invalid choice" in capsys.readouterr().err
