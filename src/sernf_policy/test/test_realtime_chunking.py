"""ChunkScheduler: the timing of docs/design.md §6 (Fig. 7), overruns and late-chunk splicing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sernf_policy.realtime_chunking import HOLD, ChunkScheduler, ChunkTimingConfig

P, H, A = 3, 10, 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chunk(base: float, h: int = H) -> np.ndarray:
    """[h, A] chunk whose action k is (base + k, -(base + k)): easy to identify."""
    k = base + np.arange(h, dtype=np.float32)
    return np.stack([k, -k], axis=1)


def hold() -> np.ndarray:
    return np.full(A, 0.5, np.float32)


def make(p: int = P, h: int = H) -> tuple[ChunkScheduler, FakeClock]:
    clock = FakeClock()
    return ChunkScheduler(ChunkTimingConfig(P=p, H=h, action_dim=A), clock=clock), clock


def test_config_validation():
    with pytest.raises(ValueError, match="H must be >= 1"):
        ChunkTimingConfig(P=1, H=0, action_dim=1)
    with pytest.raises(ValueError, match="P must be >= 0"):
        ChunkTimingConfig(P=-1, H=2, action_dim=1)
    with pytest.raises(ValueError, match="must be an int"):
        ChunkTimingConfig(P=1.5, H=2, action_dim=1)


def test_first_decision_prefix_is_p_hold_actions_and_chunk_follows_it():
    s, clock = make()
    assert s.decision_due()
    req = s.begin_decision(hold())
    assert req.decision_step == 0 and req.first_chunk_step == P
    np.testing.assert_array_equal(req.prefix, np.tile(hold(), (P, 1)))
    assert not s.decision_due()  # in flight
    clock.now += 0.05
    res = s.submit(chunk(0), req.request_id)
    assert res.accepted and res.queued == H and res.dropped == 0
    assert res.latency_s == pytest.approx(0.05)
    # Executed sequence: hold x P, then the chunk in order.
    executed = [s.tick() for _ in range(P + H - P)]
    for a in executed[:P]:
        np.testing.assert_array_equal(a, hold())
    np.testing.assert_array_equal(np.stack(executed[P:]), chunk(0)[: H - P])


def test_steady_state_decision_every_h_ticks_with_last_p_of_chunk_as_prefix():
    s, _ = make()
    decisions, executed = [], []
    pending = None
    for step in range(5 * H):
        if s.decision_due():
            req = s.begin_decision(hold())
            decisions.append(req)
            pending = req  # answered one tick later (inference well within P ticks)
        result = s.tick()
        assert result is not HOLD, f"overrun at step {step}"
        executed.append(result)
        if pending is not None and step == pending.decision_step:
            s.submit(chunk(100 * len(decisions)), pending.request_id)
            pending = None
    assert [d.decision_step for d in decisions] == [0, H, 2 * H, 3 * H, 4 * H]
    for i, d in enumerate(decisions[1:], start=1):
        # The prefix of decision i is the last P actions of chunk i-1 (not yet executed).
        np.testing.assert_array_equal(d.prefix, chunk(100 * i)[H - P:])
        # The chunk of decision i starts right after its prefix: at step d + P.
        np.testing.assert_array_equal(executed[d.decision_step + P], chunk(100 * (i + 1))[0])
    assert s.stats().overruns == 0


def test_inference_taking_exactly_p_ticks_leaves_no_gap():
    s, _ = make()
    req = s.begin_decision(hold())
    for _ in range(P):
        assert s.tick() is not HOLD
    s.submit(chunk(0), req.request_id)  # arrives just before step t+P is executed
    np.testing.assert_array_equal(s.tick(), chunk(0)[0])
    assert s.stats().overruns == 0


def test_queue_runs_dry_holds_and_counts_overruns():
    s, _ = make()
    s.begin_decision(hold())
    for _ in range(P):
        s.tick()
    assert s.tick() is HOLD
    assert s.tick() is HOLD
    st = s.stats()
    assert st.overruns == 2 and st.queue_depth == 0 and st.in_flight
    assert not s.decision_due()  # still waiting for the chunk in flight


def test_late_chunk_drops_elapsed_actions_and_keeps_time_slots():
    s, _ = make()
    req = s.begin_decision(hold())
    for _ in range(P):
        s.tick()
    late = 4
    for _ in range(late):
        assert s.tick() is HOLD
    res = s.submit(chunk(0), req.request_id)
    assert res.accepted and res.dropped == late and res.queued == H - late
    assert "late" in res.reason
    # The next executed action is the one planned for this step: chunk[late].
    np.testing.assert_array_equal(s.tick(), chunk(0)[late])
    # Next decision on the original grid: at step H (P actions remain then).
    while not s.decision_due():
        assert s.tick() is not HOLD
    req2 = s.begin_decision(hold())
    assert req2.decision_step == req.decision_step + H
    np.testing.assert_array_equal(req2.prefix, chunk(0)[H - P:])
    st = s.stats()
    assert st.actions_dropped == late and st.overruns == late


def test_very_late_chunk_leaves_fewer_than_p_and_prefix_is_topped_up_with_hold():
    s, _ = make()
    req = s.begin_decision(hold())
    for _ in range(P):
        s.tick()
    late = H - 1  # only the chunk's last action is still in the future
    for _ in range(late):
        s.tick()
    res = s.submit(chunk(0), req.request_id)
    assert res.queued == 1
    assert s.decision_due()
    req2 = s.begin_decision(np.array([7.0, 7.0], np.float32))
    expected = np.concatenate([chunk(0)[H - 1:], np.tile([7.0, 7.0], (P - 1, 1))])
    np.testing.assert_array_equal(req2.prefix, expected)
    # The prefix is exactly what gets executed.
    for k in range(P):
        np.testing.assert_array_equal(s.tick(), expected[k])


def test_chunk_later_than_h_is_discarded_and_a_new_decision_is_due():
    s, _ = make()
    req = s.begin_decision(hold())
    for _ in range(P + H):
        s.tick()
    res = s.submit(chunk(0), req.request_id)
    assert not res.accepted and res.dropped == H and "discarded" in res.reason
    assert s.decision_due()
    assert s.tick() is HOLD


def test_stale_or_unknown_request_is_refused_after_reset_or_fail():
    s, _ = make()
    req = s.begin_decision(hold())
    s.reset()
    res = s.submit(chunk(0), req.request_id)
    assert not res.accepted and "not the one in flight" in res.reason
    assert s.stats().queue_depth == 0
    req2 = s.begin_decision(hold())
    assert s.fail(req2.request_id)
    assert not s.fail(req2.request_id)
    assert not s.submit(chunk(0), req2.request_id).accepted
    assert s.decision_due()


def test_bad_chunks_and_bad_calls_raise():
    s, _ = make()
    req = s.begin_decision(hold())
    with pytest.raises(RuntimeError, match="in flight"):
        s.begin_decision(hold())
    with pytest.raises(ValueError, match=r"\[H, A\]"):
        s.submit(np.zeros((H - 1, A)), req.request_id)
    bad = chunk(0)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        s.submit(bad, req.request_id)
    with pytest.raises(ValueError, match="hold_action"):
        make()[0].begin_decision(np.zeros(A + 1))
    assert s.submit(chunk(0), req.request_id).accepted  # request stayed in flight
    with pytest.raises(RuntimeError, match="no decision due"):
        s.begin_decision(hold())


def test_hold_sentinel_is_not_a_bool():
    with pytest.raises(TypeError):
        bool(HOLD)


def test_zero_prefix_means_every_decision_costs_a_hold_tick():
    s, _ = make(p=0, h=4)
    req = s.begin_decision(hold())
    assert req.prefix.shape == (0, A)
    assert s.tick() is HOLD
    res = s.submit(chunk(0, 4), req.request_id)
    assert res.dropped == 1


def test_concurrent_worker_and_control_loop_keep_the_invariants():
    """A worker answering after a random delay while the control loop ticks: no exception,
    and every executed non-hold action is consistent (chunk actions in order)."""
    s, _ = make()
    rng = np.random.default_rng(0)
    stop = threading.Event()
    requests: list = []
    lock = threading.Lock()

    def worker():
        while not stop.is_set():
            with lock:
                req = requests.pop() if requests else None
            if req is None:
                threading.Event().wait(0.0005)
                continue
            threading.Event().wait(float(rng.uniform(0, 0.003)))
            s.submit(chunk(float(req.request_id) * 1000), req.request_id)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for _ in range(400):
            if s.decision_due():
                with lock:
                    requests.append(s.begin_decision(hold()))
            s.tick()
            threading.Event().wait(0.0002)
    finally:
        stop.set()
        thread.join(timeout=5)
    st = s.stats()
    assert st.decisions >= 400 // (H + 5)
    assert st.step == 400
