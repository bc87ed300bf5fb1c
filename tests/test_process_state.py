"""Library calls leave process-wide state as they found it: torch's thread count, matplotlib's backend."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from linearlens._threads import num_threads
from linearlens.training import TrainConfig, train


def test_num_threads_restores_the_count_even_when_the_block_raises():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with num_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), num_threads(other):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with num_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"), num_threads(-1):
        pass


def test_train_with_threads_leaves_the_thread_count_unchanged(tmp_path):
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    config = TrainConfig(out_dir=str(tmp_path / "run"), model_args={"width": 0.0625}, train_limit_per_class=1,
                         test_limit_per_class=1, epochs=1, batch_size=10, threads=other)
    train(config, progress=False)
    assert torch.get_num_threads() == before


_FIGURE_SCRIPT = r"""
import sys, matplotlib, torch
if sys.argv[2] != "default":
    matplotlib.use(sys.argv[2])  # the caller's own choice, e.g. a notebook's backend
backend_before = matplotlib.get_backend()
from linearlens.metrics.evaluation import box_plot
from linearlens.interpret.plots import contribution_bars
from linearlens.figures import subplots, save_figure
out = sys.argv[1]
box_plot({"a": torch.rand(5), "b": torch.rand(5)}, out + "/box.png", "t", "y")
fig, ax = subplots(figsize=(3, 2))
contribution_bars(ax, torch.rand(4, 3), ["input", "layer", "residual"], "t")
save_figure(fig, out + "/bars.png")
assert matplotlib.get_backend() == backend_before, (backend_before, matplotlib.get_backend())
"""


@pytest.mark.parametrize("backend", ["default", "svg"])
def test_figures_leave_the_matplotlib_backend_unchanged(tmp_path, backend):
    # A fresh interpreter: this test process may already have chosen a backend elsewhere.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    run = subprocess.run([sys.executable, "-c", _FIGURE_SCRIPT, str(tmp_path), backend], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "bars.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))
