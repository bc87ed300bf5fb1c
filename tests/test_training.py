"""Training: the BCE loss of Eq. (16), the cosine schedule, checkpoints and exact resumption."""

from __future__ import annotations

import json
import math

import pytest
import torch

from linearlens.training import TrainConfig, bce_loss, cosine_lr, load_checkpoint, train
from linearlens.training import trainer as trainer_module

TINY = {"b": 2.0, "max_out": 2, "width": 0.125}


def tiny_config(out, epochs=2) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out), model_args=dict(TINY), epochs=epochs, batch_size=16,
        train_limit_per_class=6, test_limit_per_class=2, seed=3,
    )


def test_bce_loss_is_eq16_on_one_hot_labels():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.5, 0.1, 0.0]])
    labels = torch.tensor([2, 0])
    p = torch.sigmoid(logits)
    y = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(bce_loss(logits, labels), expected, atol=1e-6)


def test_logit_bias_gives_probability_point_one_for_zero_evidence():
    # App. C.1.1: b = log(0.1/0.9) makes sigmoid(W 0 + b) = 0.1 for every class.
    from linearlens.models import create_model

    model = create_model("bcos_cifar", **TINY)
    assert math.isclose(1 / (1 + math.exp(-model.logits.bias)), 0.1, rel_tol=1e-9)


def test_cosine_schedule_endpoints_and_monotonicity():
    values = [cosine_lr(s, 100, 1e-3, 1e-5) for s in range(101)]
    assert math.isclose(values[0], 1e-3) and math.isclose(values[-1], 1e-5)
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_training_writes_safetensors_and_json_and_reloads(tmp_path):
    metrics = train(tiny_config(tmp_path, epochs=1), progress=False)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "state.safetensors", "state.json", "history.json"} <= files
    assert not any(name.endswith((".pt", ".pth", ".pkl", ".tmp")) for name in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "bcos_cifar" and config["model_args"] == TINY
    model = load_checkpoint(tmp_path)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), metrics["model"](x), atol=1e-6)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    reference = train(tiny_config(tmp_path / "straight"), progress=False)["model"]

    # Interrupt the second epoch after a few steps: the first epoch's checkpoint must survive.
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def flaky_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # 60 images / 16 per batch = 4 steps per epoch
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]

    resumed = train(tiny_config(tmp_path / "resumed"), progress=False)
    assert resumed["resumed_from_epoch"] == 1
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed["model"].state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    train(tiny_config(tmp_path, epochs=1), progress=False)
    other = tiny_config(tmp_path, epochs=1)
    other.lr = 5e-4
    with pytest.raises(ValueError, match="different settings"):
        train(other, progress=False)


def test_bad_training_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        train(TrainConfig(out_dir=str(tmp_path), epochs=0), progress=False)
    with pytest.raises(ValueError, match="lr_final"):
        train(TrainConfig(out_dir=str(tmp_path), lr=1e-5, lr_final=1e-3), progress=False)
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        train(TrainConfig(out_dir=str(tmp_path), channels_last="no"), progress=False)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "bce_loss", lambda logits, labels: logits.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan"):
        train(tiny_config(tmp_path, epochs=1), progress=False)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_option_sets_the_batch_layout(tmp_path, monkeypatch, channels_last):
    """``channels_last`` feeds the network NHWC batches (the layers' NHWC kernels), otherwise contiguous ones;
    the run trains either way."""
    layouts = []
    original = trainer_module.create_model

    def spying_create_model(*args, **kwargs):
        model = original(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda module, inputs: layouts.append(
                (module.training, inputs[0].is_contiguous(memory_format=torch.channels_last),
                 inputs[0].is_contiguous())))
        return model

    monkeypatch.setattr(trainer_module, "create_model", spying_create_model)
    config = tiny_config(tmp_path, epochs=1)
    config.channels_last = channels_last
    metrics = train(config, progress=False)
    training_layouts = {(cl, contiguous) for is_training, cl, contiguous in layouts if is_training}
    assert training_layouts == ({(True, False)} if channels_last else {(False, True)})
    assert math.isfinite(metrics["test_accuracy"])
