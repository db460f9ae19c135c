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
    assert seen["gw0"] == set(range(1, 51)) and seen["gw1"] == set(range(51, 101))  # the whole slice
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


def test_successive_tests_never_reuse_a_recent_domain(monkeypatch):
    # What one test's graph leaves while it shuts down must not meet the next tests' graphs.
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    drawn = [free_domain_id(1, 100) for _ in range(200)]
    for i in range(len(drawn) - 49):
        assert len(set(drawn[i:i + 50])) == 50, f"a domain came back within 50 calls: {drawn[i:i + 50]}"
