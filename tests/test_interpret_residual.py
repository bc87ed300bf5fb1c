"""``linearlens interpret``'s residual statistics: bounded, robust to near-zero scores, and for a B-cos
network equal to its logit bias."""

from __future__ import annotations

import math

import torch

from linearlens.cli.interpret import logit_bias_check, residual_statistics
from linearlens.interpret import LinearScope
from linearlens.models import create_model


def test_residual_fraction_is_bounded_where_the_ratio_explodes():
    score = torch.tensor([2.0, 1e-9, -1.0, 0.0], dtype=torch.float64)
    residual = torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    stats = residual_statistics(score, residual)
    # |r| / (|score - r| + |r|): 1/2, 1/(1 - 1e-9 + 1), 0.5/2, and 0 where both parts vanish
    expected = torch.tensor([0.5, 1 / (2 - 1e-9), 0.25, 0.0], dtype=torch.float64)
    assert math.isclose(stats["residual_fraction"]["median"], float(torch.quantile(expected, 0.5)), rel_tol=1e-12)
    assert math.isclose(stats["residual_fraction"]["mean"], float(expected.mean()), rel_tol=1e-12)
    assert 0 <= stats["residual_fraction"]["q05"] <= stats["residual_fraction"]["q95"] <= 1
    # The signed ratio's 1e9 outlier moves its quantiles' tail, not a mean the summary would print.
    assert "mean" not in stats["residual_over_score"]
    assert stats["residual_over_score"]["median"] < 1


def test_bcos_residual_is_the_logit_bias():
    torch.manual_seed(0)
    model = create_model("bcos_cifar", width=0.0625).double().eval()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    scope = LinearScope(model, x)
    check = logit_bias_check(model, scope.residual)
    assert check["residual_is_logit_bias"], check
    assert check["max_abs_residual_minus_bias"] < 1e-9
    assert math.isclose(check["logit_bias"], math.log(0.1 / 0.9))


def test_logit_bias_check_refuses_a_residual_that_is_not_the_bias():
    model = create_model("bcos_cifar", width=0.0625)
    assert not logit_bias_check(model, torch.zeros(2, 10))["residual_is_logit_bias"]
    assert logit_bias_check(torch.nn.Linear(2, 2), torch.zeros(2, 2)) == {}
