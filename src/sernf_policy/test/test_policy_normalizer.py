"""Min/max normalizer: range, margin, constant dims, round trip, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sernf_policy.normalizer import Normalizer


def test_data_maps_strictly_inside_unit_box_and_round_trips():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(50, 6, 3)) * np.array([1.0, 10.0, 0.01]) + np.array([0.0, 5.0, -3.0])
    norm = Normalizer.from_data(data, margin=0.05)
    x = torch.as_tensor(data, dtype=torch.float32)
    y = norm.normalize(x)
    assert y.abs().max() < 1.0
    assert y.abs().max() > 0.85  # the range is used (margin 5% per side -> |y| <= 1/1.1)
    assert torch.allclose(norm.unnormalize(y), x, atol=1e-4 * float(x.abs().max()))


def test_constant_dimension_maps_to_zero():
    data = np.stack([np.linspace(-1, 1, 20), np.full(20, 3.5)], axis=-1)
    norm = Normalizer.from_data(data)
    y = norm.normalize(torch.tensor(data, dtype=torch.float32))
    assert torch.allclose(y[:, 1], torch.zeros(20), atol=1e-4)
    assert torch.isfinite(y).all()


def test_fresh_normalizer_is_identity():
    x = torch.rand(4, 3) * 2 - 1
    assert torch.allclose(Normalizer(3).normalize(x), x)


def test_dict_round_trip_and_state_dict():
    norm = Normalizer.from_data(np.random.default_rng(1).uniform(-2, 4, size=(30, 4)))
    again = Normalizer.from_dict(norm.to_dict())
    assert torch.equal(norm.low, again.low) and torch.equal(norm.high, again.high)
    assert set(norm.state_dict()) == {"low", "high"}


@pytest.mark.parametrize(
    "data",
    [np.array([[0.0, np.nan]]), np.array([[np.inf, 1.0]]), np.zeros((0, 2)), np.float64(3.0)],
)
def test_bad_data_raises(data):
    with pytest.raises(ValueError):
        Normalizer.from_data(data)


def test_shape_mismatches_raise():
    norm = Normalizer(3)
    with pytest.raises(ValueError, match="last dim 3"):
        norm.fit_(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        norm.normalize(torch.zeros(2, 4))
    with pytest.raises(ValueError):
        Normalizer.from_dict({"low": [0.0, 1.0], "high": [1.0]})
    with pytest.raises(ValueError):
        Normalizer.from_dict({"low": [1.0], "high": [0.0]})
