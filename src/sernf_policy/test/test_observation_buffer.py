"""ObservationBuffer: validation, staleness and the control-rate history."""

from __future__ import annotations

import numpy as np
import pytest

from sernf_data.spec import ObsKeySpec
from sernf_policy.observation_buffer import ObservationBuffer, ObservationBufferConfig

SPEC = {
    "cam": ObsKeySpec(kind="rgb", shape=(4, 5, 3)),
    "joints": ObsKeySpec(kind="lowdim", shape=(3,)),
}


def make(T: int = 3, stale: float = 0.2) -> ObservationBuffer:
    return ObservationBuffer(SPEC, ObservationBufferConfig(history=T, stale_after_s=stale))


def img(v: int) -> np.ndarray:
    return np.full((4, 5, 3), v, np.uint8)


def fill(buf: ObservationBuffer, t: float, v: float) -> None:
    assert buf.update("cam", img(int(v)), t) == ""
    assert buf.update("joints", np.full(3, v), t) == ""


def test_config_validation():
    with pytest.raises(ValueError, match="history"):
        ObservationBufferConfig(history=0)
    with pytest.raises(ValueError, match="stale_after_s"):
        ObservationBufferConfig(history=1, stale_after_s=0.0)
    with pytest.raises(ValueError, match="stale_after_s"):
        ObservationBufferConfig(history=1, stale_after_s=float("nan"))


def test_missing_keys_are_reported_and_nothing_is_sampled():
    buf = make()
    assert buf.stale(0.0) == ["cam", "joints"]
    assert buf.update("joints", np.zeros(3), 0.0) == ""
    problems = buf.sample(0.0)
    assert list(problems) == ["cam"] and problems["cam"].startswith("missing")
    assert buf.history_length() == 0
    with pytest.raises(RuntimeError):
        buf.history()


def test_staleness_uses_receive_time_and_max_age():
    buf = make(stale=0.2)
    fill(buf, 10.0, 1)
    assert buf.stale(10.2) == []
    assert buf.stale(10.21) == ["cam", "joints"]
    assert buf.stale(10.21, max_age=0.5) == []
    assert buf.update("joints", np.ones(3), 10.2) == ""
    problems = buf.problems(10.35)
    assert list(problems) == ["cam"] and "stale" in problems["cam"]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("joints", np.array([0.0, np.nan, 1.0]), "non-finite value at index 1"),
        ("joints", np.array([0.0, np.inf, 1.0]), "non-finite"),
        ("joints", np.zeros(4), "shape [4] != expected [3]"),
        ("joints", np.array([1e39, 0, 0]), "non-finite"),  # overflows float32
        ("joints", np.array(["a", "b", "c"]), "not a real number"),
        ("cam", np.zeros((4, 5, 3), np.float32), "dtype float32 != uint8"),
        ("cam", np.zeros((5, 4, 3), np.uint8), "shape"),
    ],
)
def test_bad_input_is_rejected_with_a_reason_and_marks_the_key_invalid(key, value, reason):
    buf = make()
    fill(buf, 0.0, 1)
    got = buf.update(key, value, 0.05)
    assert reason in got
    problems = buf.problems(0.05)
    assert list(problems) == [key] and reason in problems[key]
    assert buf.latest(key) is None
    assert buf.sample(0.05)  # nothing sampled while invalid
    # A good message makes the key valid again.
    fill(buf, 0.1, 2)
    assert buf.problems(0.1) == {}


def test_invalidate_and_unknown_key():
    buf = make()
    fill(buf, 0.0, 1)
    buf.invalidate("cam", "encoding mono16 is not rgb8")
    assert "mono16" in buf.problems(0.0)["cam"]
    assert "unknown" in buf.update("nope", np.zeros(3), 0.0)


def test_history_is_sampled_at_ticks_padded_at_start_oldest_first():
    buf = make(T=3)
    fill(buf, 0.0, 1)
    # Several messages between ticks: only the newest one at the tick counts.
    assert buf.sample(0.0) == {}
    hist = buf.history()
    assert hist["joints"].shape == (3, 3) and hist["cam"].shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(hist["joints"][:, 0], [1, 1, 1])  # padded with the first
    fill(buf, 0.05, 2)
    fill(buf, 0.08, 3)
    buf.sample(0.1)
    np.testing.assert_array_equal(buf.history()["joints"][:, 0], [1, 1, 3])
    fill(buf, 0.15, 4)
    buf.sample(0.2)
    fill(buf, 0.25, 5)
    buf.sample(0.3)
    hist = buf.history()
    np.testing.assert_array_equal(hist["joints"][:, 0], [3, 4, 5])
    np.testing.assert_array_equal(hist["cam"][:, 0, 0, 0], [3, 4, 5])
    assert hist["joints"].dtype == np.float32 and hist["cam"].dtype == np.uint8
    np.testing.assert_array_equal(buf.current()["joints"], [5, 5, 5])
    buf.reset_history()
    assert buf.history_length() == 0
    assert buf.latest("joints") is not None  # latest values survive the reset


def test_history_copies_are_independent_of_later_updates():
    buf = make(T=1)
    value = np.zeros(3)
    fill(buf, 0.0, 0)
    buf.update("joints", value, 0.0)
    value[:] = 9.0  # the caller reusing its array must not change what was stored
    buf.sample(0.0)
    np.testing.assert_array_equal(buf.history()["joints"][0], [0, 0, 0])
