"""HL-Gauss value head: round trip, edge bias, clipping, loss (property tests)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sernf_policy.hl_gauss import HLGauss

supports = st.tuples(
    st.floats(-100.0, 100.0, allow_nan=False), st.floats(0.5, 200.0, allow_nan=False), st.integers(11, 151)
)


def round_trip(hl: HLGauss, y: torch.Tensor) -> torch.Tensor:
    return hl.to_value(torch.log(hl.to_probs(y).clamp_min(1e-30)))


@settings(max_examples=60, deadline=None)
@given(supports, st.floats(0.0, 1.0))
def test_round_trip_inside_support(support, frac):
    lo, width, bins = support
    hl = HLGauss(lo, lo + width, num_bins=bins)
    margin = 3 * hl.sigma
    y = torch.tensor([hl.v_min + margin + frac * (width - 2 * margin)], dtype=torch.float64)
    assert abs(round_trip(hl, y).item() - y.item()) <= 0.1 * hl.bin_width


@settings(max_examples=60, deadline=None)
@given(supports, st.floats(0.0, 1.0))
def test_truncation_bias_points_inward(support, frac):
    lo, width, bins = support
    hl = HLGauss(lo, lo + width, num_bins=bins)
    d = frac * 2 * hl.sigma  # within 2 sigma of an edge: a visible part of the Gaussian is cut
    low, high = torch.tensor([hl.v_min + d]), torch.tensor([hl.v_max - d])
    tol = 1e-4 * width
    assert round_trip(hl, low).item() >= low.item() - tol
    assert round_trip(hl, high).item() <= high.item() + tol
    if frac < 0.5:  # close to the edge the bias is clearly there
        assert round_trip(hl, low).item() > low.item()
        assert round_trip(hl, high).item() < high.item()


@settings(max_examples=40, deadline=None)
@given(supports, st.floats(0.0, 1e6))
def test_out_of_range_targets_are_clipped(support, excess):
    lo, width, bins = support
    hl = HLGauss(lo, lo + width, num_bins=bins)
    above, below = torch.tensor([hl.v_max + excess]), torch.tensor([hl.v_min - excess])
    assert torch.allclose(hl.to_probs(above), hl.to_probs(torch.tensor([hl.v_max])))
    assert torch.allclose(hl.to_probs(below), hl.to_probs(torch.tensor([hl.v_min])))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5.0, 5.0, allow_nan=False), min_size=1, max_size=16))
def test_probs_are_a_distribution(values):
    hl = HLGauss(-2.0, 3.0, num_bins=51)
    probs = hl.to_probs(torch.tensor(values))
    assert probs.shape == (len(values), 51)
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(len(values)), atol=1e-5)


def test_sigma_and_bins_follow_the_paper_defaults():
    hl = HLGauss(0.0, 1.0)
    assert hl.num_bins == 101 and hl.centers.shape == (101,) and hl.edges.shape == (102,)
    assert hl.sigma == pytest.approx(0.75 / 101)


def test_loss_is_cross_entropy_and_minimised_by_the_target():
    hl = HLGauss(-1.0, 1.0, num_bins=21)
    y = torch.tensor([0.3, -0.2])
    target = hl.to_probs(y)
    best = hl.loss(torch.log(target.clamp_min(1e-30)), y)
    worse = hl.loss(torch.zeros(2, 21), y)
    assert best.shape == (2,)
    assert (best < worse).all()
    entropy = -(target * torch.log(target.clamp_min(1e-30))).sum(-1)
    assert torch.allclose(best, entropy, atol=1e-5)


def test_loss_gradient_pushes_value_toward_target():
    hl = HLGauss(0.0, 1.0, num_bins=31)
    logits = torch.zeros(1, 31, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=5.0)
    for _ in range(50):
        opt.zero_grad()
        hl.loss(logits, torch.tensor([0.8])).sum().backward()
        opt.step()
    assert abs(hl.to_value(logits).item() - 0.8) < 0.02


@pytest.mark.parametrize("args", [(1.0, 1.0), (0.0, float("inf")), (0.0, 1.0, 1), (0.0, 1.0, 10, 0.0)])
def test_invalid_supports_raise(args):
    with pytest.raises(ValueError):
        HLGauss(*args)


def test_wrong_bin_count_raises():
    hl = HLGauss(0.0, 1.0, num_bins=11)
    with pytest.raises(ValueError, match="11 logits"):
        hl.to_value(torch.zeros(3, 10))
