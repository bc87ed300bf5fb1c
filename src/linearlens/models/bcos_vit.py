"""B-cos ViT Tiny and Small with a convolutional stem ("ViT-C", Xiao et al. 2021; the B-cos successor design).

Kept dynamic-linear end to end, so that ``f(x) = W(x) x + r`` holds exactly and passes the
engine's random-probe check:

* every linear map (patch embedding, qkv, attention output, MLP, head) is a B-cos layer;
* attention acts on the values as the linear map ``A v``: the attention weights
  ``A = softmax(q k^T / sqrt(d_h))`` are computed from ``q`` and ``k`` inside
  :func:`~linearlens.engine.state.decide`, so they are a frozen decision in the explanation modes
  (and an ordinary differentiable function in training);
* the layer norms are :class:`~linearlens.layers.norm.UncenteredLayerNorm` (centring is linear,
  the scale is decided, no shift) in the v2 design and removed in the paper design;
* the learnt positional embedding is an input-independent additive term: the frozen system carries
  it through the network, and it is what the residual ``r(x0)`` (the output for the zero probe)
  holds besides the logit bias.

The stem is four 3x3 B-cos convolutions (stride 2 each at 224 px, giving 14x14 tokens, "patch size
1"); tokens are averaged before the head (no class token).  Depth 11: the stem counts as the twelfth
block, as in Xiao et al.  A token grid of another size than the embedding's is served by bilinear
interpolation of the embedding (input-independent, so it stays in the residual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.state import decide
from .bcos_factory import BcosLayers, finish_model, parse_options
from .registry import register_model

__all__ = ["BcosViT", "Attention"]

_S, _PAPER_T = 100.0, 1.0  # the papers give no ViT values; the ResNet scale s = 100 and T = 1 (docs)


class Attention(nn.Module):
    """Multi-head self-attention with decided attention weights: ``proj(softmax(q k^T / sqrt(d)) v)``."""

    def __init__(self, layers: BcosLayers, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = layers.linear(dim, 3 * dim)
        self.proj = layers.linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        scale = self.head_dim**-0.5
        weights = decide(lambda q_, k_: torch.softmax(q_ @ k_.transpose(-2, -1) * scale, dim=-1), q, k)
        return self.proj((weights @ v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))`` (two B-cos layers)."""

    def __init__(self, layers: BcosLayers, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1, self.attn = layers.layer_norm(dim), Attention(layers, dim, heads)
        self.norm2 = layers.layer_norm(dim)
        self.mlp = nn.Sequential(layers.linear(dim, mlp_dim), layers.linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BcosViT(nn.Module):
    """AddInverse, convolutional stem, 1x1 patch embedding, + positional embedding, blocks, norm, mean, head."""

    def __init__(self, layers: BcosLayers, stem: tuple[int, ...], strides: tuple[int, ...], dim: int, depth: int,
                 heads: int, grid: int) -> None:
        super().__init__()
        self.encoding = layers.encoding()
        head_dim = max(1, round(dim // heads * layers.options.width))
        dim = head_dim * heads
        units, c_in = [], 2 * layers.options.in_channels
        for c, s in zip(stem, strides):
            c = layers.channels(c)
            units.append(layers.conv_norm(c_in, c, 3, s, 1))
            c_in = c
        self.stem = nn.Sequential(*units, layers.conv(c_in, dim, 1))
        self.pos_embedding = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)
        self.blocks = nn.Sequential(*(Block(layers, dim, heads, 4 * dim) for _ in range(depth)))
        self.norm = layers.layer_norm(dim)
        self.classifier = layers.linear(dim, layers.options.num_classes)
        self.logits = layers.head()

    def positional_embedding(self, height: int, width: int) -> Tensor:
        """The embedding for a ``height x width`` token grid, ``(1, dim, height, width)``."""
        pos = self.pos_embedding
        if pos.shape[-2:] != (height, width):
            pos = F.interpolate(pos, size=(height, width), mode="bilinear", align_corners=False)
        return pos

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.stem(self.encoding(x))
        tokens = tokens + self.positional_embedding(*tokens.shape[-2:]).to(tokens.dtype)
        tokens = self.blocks(tokens.flatten(2).transpose(1, 2))
        return self.logits(self.classifier(self.norm(tokens).mean(dim=1)))


_SIZES = {"tiny": ((24, 48, 96, 192), 192, 3), "small": ((48, 96, 192, 384), 384, 6)}


def _build(name: str, size: str, small_input: bool, kwargs: dict) -> BcosViT:
    options, family = parse_options(name, kwargs, small_input=small_input, s=_S, paper_temperature=_PAPER_T,
                                    extra={"depth": 11})
    if not isinstance(family["depth"], int) or family["depth"] < 1:
        raise ValueError(f"{name}: depth must be a positive int, got {family['depth']!r}")
    stem, dim, heads = _SIZES[size]
    # 224 / 2^4 = 14x14 tokens; 32 / 2^2 = 8x8 tokens for the small-input variant
    strides, grid = ((1, 1, 2, 2), 8) if small_input else ((2, 2, 2, 2), 14)
    model = BcosViT(BcosLayers(options), stem, strides, dim, family["depth"], heads, grid)
    return finish_model(model, name, options, family, 32 if small_input else 224)


@register_model
def bcos_vit_tiny(**options) -> BcosViT:
    """B-cos ViT-C Tiny at 224x224 (dim 192, 3 heads, depth 11, conv stem 24-48-96-192); extra option ``depth``."""
    return _build("bcos_vit_tiny", "tiny", False, options)


@register_model
def bcos_vit_small(**options) -> BcosViT:
    """B-cos ViT-C Small at 224x224 (dim 384, 6 heads, depth 11, conv stem 48-96-192-384)."""
    return _build("bcos_vit_small", "small", False, options)


@register_model
def bcos_vit_tiny_cifar(**options) -> BcosViT:
    """B-cos ViT-C Tiny for 32x32 images (stem strides 1, 1, 2, 2: 8x8 tokens)."""
    return _build("bcos_vit_tiny_cifar", "tiny", True, options)


@register_model
def bcos_vit_small_cifar(**options) -> BcosViT:
    """B-cos ViT-C Small for 32x32 images."""
    return _build("bcos_vit_small_cifar", "small", True, options)
