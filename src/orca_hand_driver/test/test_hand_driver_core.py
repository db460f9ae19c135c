"""Pure core of the ORCA hand driver: hand models, calibration files, joint↔tick mapping,
command validation, clamping, rate limit, watchdog, the byte-stuffing guard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from orca_hand_driver.bus import contains_header, guard_goal
from orca_hand_driver.calibration import (
    Calibration,
    CalibrationError,
    JointMapping,
    MotorLimits,
    load_calibration,
    save_calibration,
)
from orca_hand_driver.commands import CommandError, CommandShaper, parse_command
from orca_hand_driver.hand import DriverConfig
from orca_hand_driver.hand_model import load_hand_model, model_file

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(params=["orca_v1_right", "orca_v2_right"])
def model(request):
    return load_hand_model(model_file(CONFIG, request.param))


def _calibration(model, span=1500):
    limits = {j.name: MotorLimits(j.motor, 1000 + 10 * k, 1000 + 10 * k + span) for k, j in enumerate(model.joints)}
    return Calibration(model.name, model.fingerprint(), limits)


def test_hand_models_load_with_17_joints(model):
    assert len(model.joints) == 17 and sorted(model.motor_ids) == list(range(1, 18))
    assert model.baud_rate in (1_000_000, 3_000_000)
    assert all(j.lower <= j.neutral <= j.upper for j in model.joints)


def test_v1_facts():
    v1 = load_hand_model(model_file(CONFIG, "orca_v1_right"))
    index_mcp = v1.joints[v1.joint_names.index("index_mcp")]
    assert (index_mcp.motor, index_mcp.inverted) == (15, True)
    assert math.degrees(index_mcp.lower) == pytest.approx(-20) and math.degrees(index_mcp.upper) == pytest.approx(95)
    assert v1.baud_rate == 3_000_000 and v1.current_limit_ma == 400
    assert v1.fingerprint() != load_hand_model(model_file(CONFIG, "orca_v2_right")).fingerprint()


def test_bad_hand_model_is_refused(tmp_path):
    data = yaml.safe_load(model_file(CONFIG, "orca_v1_right").read_text())
    data["joints"][1]["motor"] = data["joints"][0]["motor"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="share a servo id"):
        load_hand_model(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="not found"):
        load_hand_model(tmp_path / "missing.yaml")


def test_mapping_round_trip_and_direction(model):
    mapping = JointMapping(model, _calibration(model))
    rng = np.random.default_rng(0)
    q = rng.uniform(mapping.lower, mapping.upper)
    ticks = mapping.to_ticks(q)
    assert np.all(ticks >= mapping.motor_lower) and np.all(ticks <= mapping.motor_upper)
    assert np.allclose(mapping.to_joints(ticks), q, atol=0.5 / mapping.ratio.min())
    # range ends land on the calibrated limits; inverted joints the other way round
    low = mapping.to_ticks(mapping.lower)
    assert np.array_equal(low, np.where(mapping.inverted, mapping.motor_upper, mapping.motor_lower))
    # targets outside the range are clamped to it
    assert np.array_equal(mapping.to_ticks(mapping.upper + 1.0), mapping.to_ticks(mapping.upper))


def test_velocity_sign_follows_the_joint(model):
    mapping = JointMapping(model, _calibration(model))
    v = mapping.velocity_to_joints(np.full(17, 10.0))
    assert np.all(np.sign(v) == mapping.sign)


def test_calibration_file_round_trip_refusal_and_backup(model, tmp_path):
    path = tmp_path / "cal.yaml"
    cal = _calibration(model)
    assert save_calibration(path, cal, model) is None
    loaded = load_calibration(path, model)
    assert loaded.limits == cal.limits
    with pytest.raises(FileExistsError):
        save_calibration(path, _calibration(model, span=1400), model)
    assert load_calibration(path, model).limits == cal.limits  # untouched
    backup = save_calibration(path, _calibration(model, span=1400), model, overwrite=True)
    assert backup is not None and load_calibration(backup, model).limits == cal.limits
    assert load_calibration(path, model).limits != cal.limits


def test_calibration_for_another_hand_or_edited_is_refused(tmp_path):
    v1 = load_hand_model(model_file(CONFIG, "orca_v1_right"))
    v2 = load_hand_model(model_file(CONFIG, "orca_v2_right"))
    path = tmp_path / "cal.yaml"
    save_calibration(path, _calibration(v1), v1)
    with pytest.raises(CalibrationError, match="orca_v1_right"):
        load_calibration(path, v2)
    data = yaml.safe_load(path.read_text())
    data["hand_model_hash"] = "0" * 16
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationError, match="fingerprint"):
        load_calibration(path, v1)
    data["hand_model_hash"] = v1.fingerprint()
    data["joints"]["wrist"]["upper_ticks"] += 100  # ratio no longer agrees
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationError, match="ratio"):
        load_calibration(path, v1)
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "none.yaml", v1)
    path.write_text("just: [a, list")
    with pytest.raises(CalibrationError, match="malformed"):
        load_calibration(path, v1)


def test_parse_command():
    names = ("a", "b", "c")
    assert parse_command(["c", "a"], [0.3, 0.1], names) == {2: 0.3, 0: 0.1}
    assert parse_command([], [1, 2, 3], names) == {0: 1.0, 1: 2.0, 2: 3.0}
    for bad_names, bad_positions, why in (
        (["a", "x"], [0, 0], "unknown"), (["a"], [float("nan")], "non-finite"),
        (["a", "b"], [0.0], "2 names but 1"), ([], [0.0], "no joint names"),
        (["a", "a"], [0, 0], "twice"), (["b"], [float("inf")], "non-finite"),
    ):
        with pytest.raises(CommandError, match=why):
            parse_command(bad_names, bad_positions, names)


def test_shaper_clamps_rate_limits_and_holds_on_timeout():
    shaper = CommandShaper(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), max_step_rad=0.1, timeout_s=0.2)
    shaper.start(np.array([0.0, 0.5]))
    out = shaper.next_target(np.array([0.0, 0.5]), 0.0)
    assert out.holding and np.allclose(out.positions, [0.0, 0.5])
    shaper.command({0: 5.0}, now=1.0)  # beyond the range: clamped to 1.0
    positions = []
    for k in range(15):
        out = shaper.next_target(np.zeros(2), 1.0 + 0.01 * k)
        positions.append(out.positions[0])
        assert out.clamped and not out.holding
    assert np.allclose(np.diff(positions[:10]), 0.1) and positions[-1] == pytest.approx(1.0)
    assert out.positions[1] == pytest.approx(0.5)  # the joint not named keeps its target
    # watchdog: after 0.2 s without a command, hold the MEASURED position
    measured = np.array([0.8, 0.45])
    out = shaper.next_target(measured, 1.0 + 0.21)
    assert out.holding and np.allclose(out.positions, measured) and shaper.watchdog_trips == 1
    shaper.command({1: 0.0}, now=2.0)
    out = shaper.next_target(measured, 2.0)
    assert not out.holding and out.positions[1] == pytest.approx(0.35) and out.positions[0] == pytest.approx(0.8)


def test_stuffing_guard():
    # single-turn goals (0..4095) can never contain FF FF FD ...
    assert not any(contains_header(t.to_bytes(4, "little", signed=True)) for t in range(4096))
    # ... a negative multi-turn goal can: -131073 = FF FF FD FF
    assert contains_header((-131073).to_bytes(4, "little", signed=True))
    value, adjusted = guard_goal(-131073)
    assert adjusted and value == -131072 and not contains_header(value.to_bytes(4, "little", signed=True))
    assert guard_goal(2048) == (2048, False)


def test_driver_config_validation():
    with pytest.raises(ValueError):
        DriverConfig(control_rate_hz=0)
    with pytest.raises(ValueError):
        DriverConfig(return_delay_us=3)
    with pytest.raises(ValueError):
        DriverConfig(status_return_level=0)
