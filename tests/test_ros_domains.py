"""Each pytest-xdist worker draws DDS domain ids from its own slice, so parallel graphs never meet."""

from __future__ import annotations

import pytest
from ros_domains import free_domain_id


def test_workers_get_disjoint_slices(monkeypatch):
    seen: dict[str, set[int]] = {}
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        seen[worker] = {free_domain_id(1, 100) for _ in range(400)}
    assert seen["gw0"] <= set(range(1, 51)) and seen["gw1"] <= set(range(51, 101))
    assert len(seen["gw0"]) > 30 and len(seen["gw1"]) > 30  # still random within the slice
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert {free_domain_id(101, 200) for _ in range(200)} <= set(range(151, 201))


def test_without_xdist_the_whole_range(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    drawn = {free_domain_id(1, 100) for _ in range(1000)}
    assert drawn <= set(range(1, 101)) and min(drawn) <= 10 and max(drawn) >= 90


def test_too_many_workers_is_an_error(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "300")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    with pytest.raises(RuntimeError, match="cannot share"):
        free_domain_id(1, 100)
