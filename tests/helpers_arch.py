"""Shared checks for the architecture-family tests: the random-probe check and the stride audit."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from linearlens import LinearScope
from linearlens.explain import explain
from linearlens.layers import BlurPool, FLCPooling

ANTIALIAS_POOLS = (BlurPool, FLCPooling)


def probe_check(model: nn.Module, x: Tensor, seed: int = 0, live: bool = True) -> LinearScope:
    """Rows of ``W(x0)`` applied to a random probe plus ``r(x0)`` equal the two-batch probe run, and
    the rows applied to ``x0`` itself plus ``r(x0)`` give ``f(x0)`` (the live forward pass if ``live``,
    else the explanation's recorded outputs).  Returns the scope (``residual``)."""
    x = x.double()
    # the built-in self-checks are switched off: this function is the (independent) check
    e = explain(model, x, "all", method="linear_rows", check=False)
    scope = LinearScope(model, x, check=False)
    z = torch.randn(e.inputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)
    own = (e.weights * e.inputs.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(own, model(x) if live else e.outputs, rtol=1e-9, atol=1e-9)
    return scope


def _stride_of(value) -> int:
    if value is None:
        return 1
    if isinstance(value, int):
        return value
    return max(value) if len(value) else 1


class _StrideRecorder(TorchFunctionMode):
    """Records every convolution / pooling call with stride > 1 made outside the anti-aliasing pools."""

    OPS = {"conv1d", "conv2d", "conv3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
           "max_pool3d", "lp_pool2d"}

    def __init__(self) -> None:
        super().__init__()
        self.inside_pool = 0
        self.strided: list[tuple[str, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.OPS and not self.inside_pool:
            if name.startswith("conv"):
                stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
            else:
                stride = args[2] if len(args) > 2 else kwargs.get("stride")
                if stride is None or (not isinstance(stride, int) and len(stride) == 0):
                    # a pool's stride defaults to its kernel size
                    stride = args[1] if len(args) > 1 else kwargs.get("kernel_size")
            if _stride_of(stride) > 1:
                self.strided.append((name, _stride_of(stride)))
        return func(*args, **kwargs)


def strided_operations(model: nn.Module, x: Tensor) -> tuple[list[tuple[str, int]], int]:
    """Strided convolution/pooling calls a forward pass makes outside anti-aliasing pools, and the
    number of anti-aliasing pools it runs."""
    recorder = _StrideRecorder()
    pools = [m for m in model.modules() if isinstance(m, ANTIALIAS_POOLS)]
    handles = []
    for pool in pools:
        handles.append(pool.register_forward_pre_hook(lambda *_: setattr(recorder, "inside_pool",
                                                                          recorder.inside_pool + 1)))
        handles.append(pool.register_forward_hook(lambda *_: setattr(recorder, "inside_pool",
                                                                      recorder.inside_pool - 1)))
    calls = []
    handles += [p.register_forward_hook(lambda *_: calls.append(1)) for p in pools]
    try:
        with torch.no_grad(), recorder:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return recorder.strided, len(calls)


def module_strides(model: nn.Module) -> list[str]:
    """Names of modules other than anti-aliasing pools whose ``stride`` attribute exceeds 1."""
    return [
        name for name, m in model.named_modules()
        if not isinstance(m, ANTIALIAS_POOLS) and _stride_of(getattr(m, "stride", None)) > 1
    ]


# design x antialias in full; B, MaxOut, multi-label and the blur size varied along the way
OPTION_COMBOS = [
    {"design": "v2", "antialias": None},
    {"design": "v2", "antialias": "blurpool", "b": 1.5},
    {"design": "v2", "antialias": "flc", "multi_label": True},
    {"design": "paper", "antialias": None},
    {"design": "paper", "antialias": "blurpool", "max_out": 3, "blur_size": 4},
    {"design": "paper", "antialias": "flc", "b": 2.5},
]


def combo_id(options: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in options.items())


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and scales, so that the norms are not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "running_var"):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if type(m).__name__ in ("UncenteredBatchNorm2d", "UncenteredLayerNorm"):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return model


def family_probe_case(create, name: str, options: dict, width: float, size: int) -> None:
    """Build ``name`` small, in float64, and run the probe check; the residual must be the logit bias."""
    model = randomise_norms(create(name, num_classes=3, width=width, **options)).double().eval()
    x = torch.rand(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scope = probe_check(model, x)
    bias = model.model_args["logit_bias"]
    torch.testing.assert_close(scope.residual, torch.full_like(scope.residual, bias), rtol=0, atol=1e-10)
