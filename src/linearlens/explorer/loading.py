"""What ``linearlens serve`` and ``linearlens report`` accept as a network and as images."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from ..data import CIFAR10_CLASSES, load_cifar10
from ..models import create_model, list_models, load_checkpoint
from .arrays import decode_image

__all__ = ["load_network", "load_image_files", "embedded_examples", "atlas_cache_dir"]


def load_network(spec: str, seed: int = 0) -> tuple[nn.Module, list[str] | None, str]:
    """A network from a run directory of ``linearlens train``, a registered model name (random
    weights, for a quick look) or ``file.py:factory`` (any ``nn.Module`` factory, e.g. the
    super-resolution demo's ``experiments/linearscope/sr_demo.py:sr_network(3)``, literal arguments
    only; a ``.pt`` state dict may follow as ``file.py:factory=weights.pt``).

    Returns ``(model in eval mode, class names or None, description)``.
    """
    path = Path(spec)
    if path.is_dir() or path.suffix == ".safetensors":
        model = load_checkpoint(path)
        return model, _cifar_names(model), f"checkpoint {spec}"
    if ".py:" in spec:
        return _from_factory(spec)
    if spec in list_models():
        torch.manual_seed(seed)
        model = create_model(spec).eval()
        return model, _cifar_names(model), f"{spec} (random weights, seed {seed})"
    raise FileNotFoundError(
        f"{spec!r} is neither a run directory, a registered model ({', '.join(list_models())}) nor file.py:factory"
    )


def _cifar_names(model: nn.Module) -> list[str] | None:
    classes = getattr(getattr(model, "config", None), "num_classes", None)
    return list(CIFAR10_CLASSES) if classes == len(CIFAR10_CLASSES) else None


def _from_factory(spec: str) -> tuple[nn.Module, None, str]:
    file, _, rest = spec.partition(".py:")
    if "(" in rest and ")" in rest:  # keyword arguments have '=' too: the weights follow the closing ')'
        end = rest.rindex(")") + 1
        call, weights = rest[:end], rest[end:].removeprefix("=")
    else:
        call, _, weights = rest.partition("=")
    factory, args, kwargs = _parse_call(call)
    source = Path(file + ".py")
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_linearlens_user_{source.stem}", source)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(source.resolve().parent))
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    build = getattr(module, factory, None)
    if not callable(build):
        raise ValueError(f"{source} has no function {factory!r}")
    model = build(*args, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{source}:{factory}() returned a {type(model).__name__}, not an nn.Module")
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            state = state.get("state_dict", state.get("model", state))
        model.load_state_dict(state)
    return model.eval(), None, f"{source}:{factory}" + (f" with {weights}" if weights else " (random weights)")


def _parse_call(text: str) -> tuple[str, list, dict]:
    """``name`` or ``name(1, k=2)`` with literal arguments."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if isinstance(node, ast.Name):
            return node.id, [], {}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return (node.func.id, [ast.literal_eval(a) for a in node.args],
                    {k.arg: ast.literal_eval(k.value) for k in node.keywords})
    except (SyntaxError, ValueError):
        pass
    raise ValueError(f"expected a factory name such as 'make' or 'make(3, width=2)', got {text!r}")


def load_image_files(paths: list[str]) -> list[tuple[str, torch.Tensor]]:
    """``(name, (3, H, W) float image)`` for each file; a clear error for a missing or non-image file."""
    images = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        images.append((path.name, decode_image(path.read_bytes(), p)))
    return images


def embedded_examples(per_class: int = 2) -> list[tuple[str, torch.Tensor, int]]:
    """``(name, image, label)`` for the first ``per_class`` embedded CIFAR-10 test images of each class."""
    data = load_cifar10("embedded", "test", limit_per_class=per_class)
    order = torch.argsort(data.labels * len(data) + torch.arange(len(data)))
    images = data.to_float()
    return [(f"test #{int(i)} ({data.classes[int(data.labels[i])]})", images[i], int(data.labels[i])) for i in order]


def atlas_cache_dir(spec: str, cache: str | None) -> Path:
    """Where atlases are cached: ``cache`` if given, else the run directory's ``atlas-cache`` folder
    (next to the weights it was computed from), else ``outputs/atlas-cache``."""
    if cache:
        return Path(cache)
    path = Path(spec)
    run_dir = path.parent if path.suffix == ".safetensors" else path
    return run_dir / "atlas-cache" if run_dir.is_dir() else Path("outputs/atlas-cache")
