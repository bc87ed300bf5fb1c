"""Layer-wise residual decomposition (Theorem 1, Eqs. (8), (16)) and pixel discussions (Eq. (18)).

The sequential tests rebuild every layer's frozen matrix ``A_i`` and constant ``c_i`` densely and by
hand (masks from the activations, pooling selections from ``return_indices``, batch-norm scale and
shift from its statistics), then evaluate the formulas of Theorem 1 and Eq. (18) directly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers_nets import randomise_bn
from linearlens.interpret import LinearScope, bias_contributions, pixel_discussions, pixel_votes
from linearlens.models import create_model

# Tiny networks: one thread is fastest and immune to other jobs on the machine.
pytestmark = pytest.mark.usefixtures("single_thread")


def _sequential() -> nn.Sequential:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3),
    )
    return randomise_bn(model).double().eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)


def _matrix(fn, shape) -> torch.Tensor:
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return fn(basis).reshape(n, -1).T


def _frozen_layers(model: nn.Sequential, a: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, A_i, c_i)`` of every layer at input ``a`` (one image), built by hand."""
    layers = []
    for name, m in model.named_children():
        shape = a.shape
        if isinstance(m, nn.Conv2d):
            mat = _matrix(lambda b, m=m: F.conv2d(b, m.weight, None, m.stride, m.padding), shape)
            const = m.bias.detach()[:, None, None].expand(-1, *m(a[None])[0].shape[1:]).flatten()
        elif isinstance(m, nn.BatchNorm2d):
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            shift = m.bias - m.running_mean * scale
            mat = torch.diag(scale.detach()[:, None, None].expand(shape).flatten())
            const = shift.detach()[:, None, None].expand(shape).flatten()
        elif isinstance(m, nn.ReLU):
            mat, const = torch.diag((a > 0).double().flatten()), torch.zeros(a.numel(), dtype=torch.float64)
        elif isinstance(m, nn.MaxPool2d):
            _, idx = F.max_pool2d(a[None], m.kernel_size, m.stride, return_indices=True)
            idx = idx[0].flatten(1)  # (C, positions): flat index within the channel
            c, hw = shape[0], shape[1] * shape[2]
            mat = torch.zeros(idx.numel(), a.numel(), dtype=torch.float64)
            rows = torch.arange(idx.numel())
            mat[rows, (torch.arange(c)[:, None] * hw + idx).flatten()] = 1
            const = torch.zeros(idx.numel(), dtype=torch.float64)
        elif isinstance(m, nn.Flatten):
            mat, const = torch.eye(a.numel(), dtype=torch.float64), torch.zeros(a.numel(), dtype=torch.float64)
        elif isinstance(m, nn.Linear):
            mat, const = m.weight.detach(), m.bias.detach()
        else:
            raise AssertionError(type(m))
        layers.append((name, mat, const))
        a = m(a[None])[0].detach()
    return layers


def test_sequential_contributions_follow_theorem_1():
    """Q_i b_hat_i of Eq. (16) and F = prod W_hat_k, from dense per-layer matrices."""
    model, x = _sequential(), _images()
    result = bias_contributions(model, x)
    assert result.groups == ["0", "1", "4", "7"]  # conv, batch norm, conv, linear; ReLU/pool have none
    for i in range(x.shape[0]):
        layers = _frozen_layers(model, x[i])
        total = torch.eye(x[i].numel(), dtype=torch.float64)
        for _, mat, _ in layers:
            total = mat @ total
        assert torch.allclose(result.input_term[i], total @ x[i].flatten(), atol=1e-10)
        for g, name in enumerate(result.groups):
            j = [n for n, _, _ in layers].index(name)
            q = torch.eye(layers[-1][1].shape[0], dtype=torch.float64)
            for _, mat, _ in layers[:j:-1]:
                q = q @ mat
            assert torch.allclose(result.contributions[i, g], q @ layers[j][2], atol=1e-10)
    assert result.other.abs().max() < 1e-12
    assert torch.allclose(result.total(), result.output, atol=1e-10)


class _Dag(nn.Module):
    """Residual addition, concatenation, in-place and functional ReLUs, BN, and an optional glue constant.

    The sigmoid sees exact zeros (after ReLU and max-pool); its gain interpretation has the constant
    ``sigmoid(0)`` there (rules.py), so it is a module here to keep "other" to the glue alone.
    """

    def __init__(self, glue: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(inplace=True))
        self.gate = nn.Sigmoid()  # a module: its constant sigmoid(0) = 1/2 at exact zeros is its own
        self.fc = nn.Linear(6, 3)
        self.glue = glue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = F.relu(h + self.branch(h)) + self.glue  # residual addition; the glue is owned by no module
        h = torch.cat([h, F.max_pool2d(h, 3, 1, 1)], 1)
        h = self.gate(F.max_pool2d(self.head(h), 2))
        return self.fc(h.mean(dim=(2, 3)))


def _dag(glue: float = 0.0) -> nn.Module:
    torch.manual_seed(9)
    return randomise_bn(_Dag(glue)).double().eval()


@pytest.mark.parametrize("glue", [0.0, 0.3])
def test_dag_contributions_add_up_to_the_output(glue):
    model, x = _dag(glue), _images()
    result = bias_contributions(model, x, chunk_size=3)  # several passes
    assert result.groups == ["stem.0", "stem.1", "branch.0", "branch.1", "head.0", "gate", "fc"]
    assert torch.allclose(result.total(), result.output, atol=1e-10)
    assert torch.allclose(result.contributions.sum(1) + result.other, result.residual, atol=1e-10)
    scope = LinearScope(model, x)
    assert torch.allclose(result.input_term, scope.apply(scope.source), atol=1e-10)
    if glue:
        assert result.other.abs().min() > 1e-3  # the glue constant, forward projected
    else:
        assert result.other.abs().max() < 1e-12


def test_groups_are_additive():
    model, x = _dag(0.3), _images()
    fine = bias_contributions(model, x)
    coarse = bias_contributions(model, x, groups="parent")
    assert coarse.groups == ["stem", "branch", "head", "gate", "fc"]
    for label in coarse.groups:
        idx = [fine.groups.index(m) for m in coarse.members[label] if m in fine.groups]
        assert torch.allclose(coarse.contributions[:, coarse.groups.index(label)], fine.contributions[:, idx].sum(1),
                              atol=1e-10)
    mapped = bias_contributions(model, x, groups={"stem": "early", "branch": "early"})
    assert mapped.groups == ["early", "head.0", "gate", "fc"]
    table, columns, targets = mapped.table()
    assert columns == ["input", "early", "head.0", "gate", "fc", "other"]
    assert torch.allclose(table.sum(-1), torch.ones_like(table.sum(-1)), atol=1e-10)
    assert torch.equal(targets, mapped.output.argmax(1, keepdim=True))


def test_adjoint_contributions_equal_forward_projections():
    """<Q_m^T delta_s, c_m> from the transposed system equals Q_m c_m from the forward probes."""
    model, x = _dag(0.3), _images()
    forward = bias_contributions(model, x)
    pd = pixel_discussions(model, x, "all")
    assert pd.groups == forward.groups
    assert torch.allclose(pd.group_contributions, forward.contributions.transpose(1, 2), atol=1e-10)


def test_pixel_discussions_follow_eq_18():
    """Input term, back-projected layer contributions (dense, by hand) and the normalisation to the score."""
    model, x = _sequential(), _images()
    pd = pixel_discussions(model, x, "all", per_group=True, normalization="score")
    assert pd.discussions.shape == (2, 3, 8, 8)
    assert torch.allclose(pd.discussions.flatten(2).sum(-1), pd.scores, atol=1e-10)
    assert torch.allclose(pd.scores, model(x), atol=1e-12)
    for i in range(x.shape[0]):
        layers = _frozen_layers(model, x[i])
        names = [n for n, _, _ in layers]
        sub = []  # F_m: input -> output of layer m
        total = torch.eye(x[i].numel(), dtype=torch.float64)
        for _, mat, _ in layers:
            total = mat @ total
            sub.append(total)
        for s in range(3):
            row = total[s]
            assert torch.allclose(pd.input_term[i, s], (row * x[i].flatten()).view(3, 8, 8).sum(0), atol=1e-10)
            bias_map = torch.zeros(3 * 64, dtype=torch.float64)
            for g, name in enumerate(pd.groups):
                j = names.index(name)
                g_vec = torch.zeros(layers[-1][1].shape[0], dtype=torch.float64)
                g_vec[s] = 1
                for _, mat, _ in layers[:j:-1]:
                    g_vec = mat.T @ g_vec  # Q_m^T delta_s
                back = sub[j].T @ (g_vec * layers[j][2])  # F_m^T (g ⊙ c_m)
                assert torch.allclose(pd.group_maps[i, s, g], back.view(3, 8, 8).sum(0), atol=1e-10)
                bias_map += back
            assert torch.allclose(pd.bias_term[i, s], bias_map.view(3, 8, 8).sum(0), atol=1e-10)
    raw = pd.input_term + pd.bias_term
    assert torch.allclose(pd.discussions, raw * (pd.scores / raw.flatten(2).sum(-1))[..., None, None], atol=1e-10)


@pytest.mark.parametrize("glue", [0.0, 0.3])
def test_layer_normalised_discussions_conserve_every_contribution(glue):
    """normalization="layer": input map + each group's exact contribution spread by |back-projection|."""
    model, x = _dag(glue), _images()
    pd = pixel_discussions(model, x, "all")
    forward = bias_contributions(model, x)
    assert torch.allclose(pd.discussions.flatten(2).sum(-1), pd.scores, atol=1e-10)
    assert torch.allclose(pd.other, forward.other, atol=1e-10)
    mass = pd.group_maps.abs()
    total = mass.flatten(3).sum(-1)[..., None, None]
    # The sigmoid's constant sits where the ReLU below is off, so its back-projection is zero: uniform.
    assert (total == 0).any()
    weights = torch.where(total > 0, mass / total, torch.full_like(mass, 1 / 64))
    spread = (pd.group_contributions[..., None, None] * weights).sum(2)
    expected = pd.input_term + spread + pd.other[..., None, None] / 64
    assert torch.allclose(pd.discussions, expected, atol=1e-10)
    with pytest.raises(ValueError, match="normalization"):
        pixel_discussions(model, x, "all", normalization="sum")


def test_pixel_votes_pick_the_class_with_the_largest_discussion():
    model, x = _dag(), _images()
    targets = torch.tensor([[2, 0, 1], [1, 2, 0]])
    pd = pixel_discussions(model, x, targets)
    votes = pixel_votes(pd)
    assert votes.shape == (2, 8, 8)
    for i in range(2):
        best = pd.discussions[i].argmax(0)
        assert torch.equal(votes[i], targets[i][best])
    assert torch.equal(pixel_votes(pixel_discussions(model, x, "all")), votes)  # same classes, other order


def test_bcos_residual_is_only_the_logit_bias():
    """For a B-cos network the only constant is the LogitLayer bias: F(x0) x0 = W(x0) x0 = f(x0) - b."""
    torch.manual_seed(10)
    model = create_model("bcos_cifar", width=0.125, b=2.0, max_out=2).eval()
    x = torch.rand(2, 3, 32, 32)
    result = bias_contributions(model, x)
    assert result.groups == ["logits"]
    assert torch.allclose(result.contributions[:, 0], torch.full((2, 10), model.logits.bias), atol=1e-5)
    assert torch.allclose(result.total(), result.output, rtol=1e-4, atol=1e-4)
