"""Loading a saved model has one implementation (``linearlens.models.loading``): ``create_model(name,
checkpoint=...)``, ``linearlens.models.load_checkpoint`` and ``linearlens.training.load_checkpoint`` give the
same weights and the same errors, and ``models/`` reads files without importing ``training/``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import linearlens.training
import linearlens.training.checkpoint
from linearlens.models import create_model, load_checkpoint
from linearlens.training import save_model
from test_architecture_imports import PACKAGE, _imports

pytestmark = pytest.mark.usefixtures("single_thread")

NAME, ARGS = "bcos_cifar", {"width": 1 / 16}


@pytest.fixture
def run(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A saved run of a model whose weights are not the constructor's (so that loading must change them)."""
    model = create_model(NAME, **ARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save_model(tmp_path / "run", model, NAME, ARGS, {})
    return tmp_path / "run", model


def test_training_names_are_the_models_loader():
    assert linearlens.training.load_checkpoint is load_checkpoint
    assert linearlens.training.checkpoint.load_checkpoint is load_checkpoint


def test_both_entry_points_give_bit_identical_weights(run):
    path, saved = run
    fresh = create_model(NAME, **ARGS).state_dict()
    by_name = create_model(NAME, checkpoint=path)
    by_path = load_checkpoint(path)
    by_file = load_checkpoint(path / "model.safetensors")
    assert not by_name.training and not by_path.training and not by_file.training
    a, b, c, ref = by_name.state_dict(), by_path.state_dict(), by_file.state_dict(), saved.state_dict()
    assert list(a) == list(b) == list(c) == list(ref)
    for key in ref:
        for loaded in (a, b, c):
            assert loaded[key].dtype == ref[key].dtype and torch.equal(loaded[key], ref[key]), key
    # the saved weights differ from a fresh model's, so equality above is not the constructor's doing
    assert any(not torch.equal(fresh[k], ref[k]) for k in ref if ref[k].is_floating_point())


def _tensors(weights: Path) -> dict[str, torch.Tensor]:
    # copies: load_file maps the file, which the breakers below overwrite
    return {k: v.clone() for k, v in load_file(str(weights)).items()}


def _pickle(weights: Path) -> None:
    torch.save(_tensors(weights), weights)


def _wrong_shape(weights: Path) -> str:
    tensors = _tensors(weights)
    key = next(k for k, v in tensors.items() if k.endswith(".weight") and v.dim() == 4)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    save_file(tensors, str(weights))
    return key


def _nan(weights: Path) -> str:
    tensors = _tensors(weights)
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(weights))
    return key


def _extra(weights: Path) -> str:
    tensors = _tensors(weights)
    tensors["stray.tensor"] = torch.zeros(3)
    save_file(tensors, str(weights))
    return "stray.tensor"


@pytest.mark.parametrize(
    "break_it, words",
    [
        (_pickle, r"pickle \(torch\.save\) file.*never loads pickles"),
        (_wrong_shape, r"shapes do not match model 'bcos_cifar'.*has shape .* the model expects"),
        (_nan, r"NaN or infinite"),
        (_extra, r"unexpected \['stray\.tensor'\]"),
    ],
    ids=["pickle", "shape", "nan", "unexpected"],
)
def test_both_entry_points_raise_the_same_error(run, break_it, words):
    path, _ = run
    weights = path / "model.safetensors"
    key = break_it(weights)
    errors = []
    for load in (lambda: create_model(NAME, checkpoint=path), lambda: load_checkpoint(path),
                 lambda: linearlens.training.load_checkpoint(weights)):
        with pytest.raises(Exception) as info:
            load()
        errors.append(info.value)
    assert all(type(e) is ValueError for e in errors), [type(e) for e in errors]
    assert str(errors[0]) == str(errors[1]) == str(errors[2])  # one implementation, one message
    message = str(errors[0])
    assert "\n" not in message and str(weights) in message
    assert re.search(words, message), message
    if key is not None:
        assert key in message


def test_a_pt_file_is_refused_by_suffix_by_both(tmp_path, run):
    path, model = run
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    for load in (lambda: create_model(NAME, checkpoint=pt), lambda: load_checkpoint(pt)):
        with pytest.raises(ValueError, match=r"model\.pt is a \.pt file.*pickled \.pt files are not loaded"):
            load()


def test_model_name_and_options(run, tmp_path):
    path, saved = run
    with pytest.raises(ValueError, match=r"holds a 'bcos_cifar' model, not 'bcos_vgg11_cifar'.*config\.json"):
        create_model("bcos_vgg11_cifar", checkpoint=path)
    # overrides that change the architecture: named as "these options", not as the config's fault
    with pytest.raises(ValueError, match=r"shapes do not match model 'bcos_cifar' with these options"):
        create_model(NAME, checkpoint=path, width=1 / 8)
    # a misspelt override is the caller's TypeError; a misspelt recorded argument is the file's ValueError
    with pytest.raises(TypeError, match="widht"):
        create_model(NAME, checkpoint=path, widht=1)
    (path / "config.json").write_text('{"model": "bcos_cifar", "model_args": {"widht": 0.0625}}')
    with pytest.raises(ValueError, match=r"config\.json: .*unknown argument.*'widht'"):
        load_checkpoint(path)
    # without a config.json, only a caller that names the model can load the weights
    bare = tmp_path / "bare"
    bare.mkdir()
    (path / "model.safetensors").rename(bare / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"bare/config\.json does not exist"):
        load_checkpoint(bare)
    loaded = create_model(NAME, checkpoint=bare / "model.safetensors", **ARGS)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_models_package_does_not_import_training():
    offenders = [str(p.relative_to(PACKAGE)) for p in sorted((PACKAGE / "models").rglob("*.py"))
                 if "training" in _imports(p.read_text(encoding="utf-8"), p.relative_to(PACKAGE).parts)]
    assert not offenders, offenders
    # and the shared reader imports nothing from linearlens at all
    assert _imports((PACKAGE / "safefiles.py").read_text(encoding="utf-8"), ("safefiles.py",)) == set()
