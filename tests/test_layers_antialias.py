"""BlurPool and FLC pooling (chest X-ray paper Sec. 3.2): exactness against independent constructions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from linearlens.explain import explain
from linearlens.interpret import LinearScope
from linearlens.layers import AddInverse, BlurPool, FLCPooling, LogitLayer, downsample
from linearlens.layers.antialias import binomial_filter, lowpass_matrix

SIZES = (7, 8, 13, 14, 15)


def fft_lowpass_reference(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """FLC along both axes with torch.fft: crop the spectrum, Nyquist pair at half weight, 1/n normalisation."""

    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        dim = dim % t.dim()
        n = t.shape[dim]
        m = -(-n // stride)
        spectrum = torch.fft.fft(t.to(torch.complex128), dim=dim)
        out = torch.zeros(*t.shape[:dim], m, *t.shape[dim + 1 :], dtype=torch.complex128)
        out = out.movedim(dim, -1)
        spectrum = spectrum.movedim(dim, -1)
        for k in range(-(m // 2), m // 2 + 1):
            weight = 0.5 if m % 2 == 0 and abs(k) == m // 2 else 1.0
            out[..., k % m] += weight * spectrum[..., k % n]
        # ifft's own 1/m times m/n: the inverse is normalised by the *input* length n
        back = torch.fft.ifft(out, dim=-1) * (m / n)
        assert back.imag.abs().max() < 1e-12, "the kept spectrum must be Hermitian"
        return back.real.movedim(-1, dim)

    return along(along(x, -2), -1)


@pytest.mark.parametrize("n", SIZES)
def test_flc_matches_fft_construction(n):
    x = torch.randn(2, 3, n, n + 1, dtype=torch.float64)
    torch.testing.assert_close(FLCPooling()(x), fft_lowpass_reference(x), rtol=0, atol=1e-12)
    assert FLCPooling()(x).shape[-2:] == (math.ceil(n / 2), math.ceil((n + 1) / 2))


@pytest.mark.parametrize("n", SIZES)
def test_flc_keeps_constant_and_band_limited_images(n):
    const = torch.full((1, 2, n, n), 3.25, dtype=torch.float64)
    torch.testing.assert_close(FLCPooling()(const), torch.full_like(FLCPooling()(const), 3.25), rtol=0, atol=1e-12)
    m = math.ceil(n / 2)
    # a real image band-limited below the output's Nyquist frequency, sampled on the input grid
    t = torch.arange(n, dtype=torch.float64)
    image = torch.zeros(n, n, dtype=torch.float64)
    for ky in range(-(m - 1) // 2, (m - 1) // 2 + 1):
        for kx in range(-(m - 1) // 2, (m - 1) // 2 + 1):
            if abs(ky) < m / 2 and abs(kx) < m / 2:
                phase = 2 * math.pi * (ky * t[:, None] + kx * t[None, :]) / n
                image += math.cos(0.7 * ky + 0.3 * kx + 1) * torch.cos(phase + 0.4 * ky - 0.2 * kx)
    out = FLCPooling()(image[None, None])[0, 0]
    # the same band-limited function, evaluated at the output positions j n / m
    s = torch.arange(m, dtype=torch.float64) * n / m
    expected = torch.zeros(m, m, dtype=torch.float64)
    for ky in range(-(m - 1) // 2, (m - 1) // 2 + 1):
        for kx in range(-(m - 1) // 2, (m - 1) // 2 + 1):
            if abs(ky) < m / 2 and abs(kx) < m / 2:
                phase = 2 * math.pi * (ky * s[:, None] + kx * s[None, :]) / n
                expected += math.cos(0.7 * ky + 0.3 * kx + 1) * torch.cos(phase + 0.4 * ky - 0.2 * kx)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    if n % 2 == 0:  # even sizes: a band-limited image is exactly subsampled
        torch.testing.assert_close(out, image[::2, ::2], rtol=0, atol=1e-10)


def test_flc_removes_frequencies_above_the_output_nyquist():
    n = 14
    t = torch.arange(n, dtype=torch.float64)
    high = torch.cos(2 * math.pi * 5 * t / n)  # |k| = 5 > 7 / 2: must vanish
    image = high[:, None] * torch.ones(n, dtype=torch.float64)[None, :]
    torch.testing.assert_close(FLCPooling()(image[None, None]), torch.zeros(1, 1, 7, 7, dtype=torch.float64),
                               rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 17), w=st.integers(1, 17), stride=st.integers(1, 4), a=st.floats(-3, 3), b=st.floats(-3, 3)
)
def test_flc_is_linear_and_identity_at_stride_one(h, w, stride, a, b):
    g = torch.Generator().manual_seed(h * 100 + w)
    x, y = torch.randn(2, 1, h, w, dtype=torch.float64, generator=g)
    pool = FLCPooling(stride)
    torch.testing.assert_close(pool(a * x + b * y), a * pool(x) + b * pool(y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lowpass_matrix(h, 1), torch.eye(h, dtype=torch.float64), rtol=0, atol=1e-12)


def test_flc_nyquist_of_even_output_is_the_symmetric_cosine():
    # n = 8 -> m = 4: the input bins +2 and -2 both land on the output Nyquist bin at half weight, so a
    # sine at k = 2 vanishes and a cosine at k = 2 keeps half its amplitude (the cutoff at gain 1/2; with
    # full weight on both bins stride 1 would double the Nyquist bin instead of being the identity).
    n, t = 8, torch.arange(8, dtype=torch.float64)
    cos2, sin2 = torch.cos(2 * math.pi * 2 * t / n), torch.sin(2 * math.pi * 2 * t / n)
    m = lowpass_matrix(n)
    torch.testing.assert_close(m @ cos2, 0.5 * cos2[::2], rtol=0, atol=1e-12)
    torch.testing.assert_close(m @ sin2, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_blurpool_size_one_is_plain_subsampling(stride):
    x = torch.randn(2, 4, 13, 10, dtype=torch.float64)
    torch.testing.assert_close(BlurPool(4, stride, 1)(x), x[..., ::stride, ::stride], rtol=0, atol=0)


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_blurpool_matches_reflect_padded_binomial_filter(size):
    x = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    row = [math.comb(size - 1, k) / 2 ** (size - 1) for k in range(size)]
    before, after = (size - 1) // 2, size // 2
    padded = F.pad(x, (before, after, before, after), mode="reflect")
    expected = torch.zeros(1, 2, 9, 11, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            expected += row[i] * row[j] * padded[..., i : i + 9, j : j + 11]
    torch.testing.assert_close(BlurPool(2, 2, size)(x), expected[..., ::2, ::2], rtol=0, atol=1e-12)
    torch.testing.assert_close(binomial_filter(size).sum(), torch.tensor(1.0, dtype=torch.float64))
    const = torch.full((1, 2, 9, 11), 2.0, dtype=torch.float64)
    torch.testing.assert_close(BlurPool(2, 2, size)(const), torch.full((1, 2, 5, 6), 2.0, dtype=torch.float64))


def test_blurpool_handles_maps_too_small_to_reflect():
    x = torch.randn(1, 3, 1, 2, dtype=torch.float64)
    assert BlurPool(3, 2, 3)(x).shape == (1, 3, 1, 1)


class _Pooled(torch.nn.Module):
    def __init__(self, pool: torch.nn.Module) -> None:
        super().__init__()
        self.encoding, self.pool, self.logits = AddInverse(), pool, LogitLayer(1.0, -0.5)

    def forward(self, x):
        return self.logits(self.pool(self.encoding(x)).flatten(1)[:, :5])


@pytest.mark.parametrize("pool", [BlurPool(6, 2, 3), FLCPooling(2), FLCPooling(3)])
def test_pools_pass_the_probe_check(pool):
    x = torch.rand(2, 3, 11, 11, dtype=torch.float64)
    model = _Pooled(pool).double().eval()
    e = explain(model, x, "all", method="linear_rows")
    scope = LinearScope(model, x)
    z = torch.randn_like(e.inputs)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(scope.residual, torch.full_like(scope.residual, -0.5))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        BlurPool(3, 0)
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        BlurPool(3, 2, 0)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        BlurPool(3)(torch.zeros(1, 4, 5, 5))
    with pytest.raises(ValueError, match="floating-point"):
        FLCPooling()(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="antialias must be one of"):
        downsample("gauss", 3, 2)
