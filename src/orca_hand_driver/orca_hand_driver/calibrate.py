"""Hard-stop calibration: drive each joint into both of its physical stops under a current limit,
detect the stall, and write the calibration file.

    ros2 run orca_hand_driver calibrate --port /dev/ttyUSB0 --hand-model orca_v1_right [--overwrite]

One joint at a time, in the hand model's order: the servo runs in current-based position mode
with the goal current at the model's ``calibration_current_ma``, so pushing into a stop cannot
exceed that current. The goal advances ``step_ticks`` every ``step_period_s`` until the shaft
has moved less than ``stall_ticks`` for ``stall_cycles`` steps in a row (it is stalled against
the stop: position stops changing, current at the limit). Both stops found, the servo returns to
the middle of its travel. Finally every joint goes to the neutral pose.

The file is never silently replaced: an existing one is refused unless ``--overwrite``, and then
kept as a timestamped backup. The check happens before anything moves.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bus import (
    ADDR_CURRENT_LIMIT,
    ADDR_GOAL_CURRENT,
    ADDR_GOAL_POSITION,
    ADDR_OPERATING_MODE,
    ADDR_PRESENT_CURRENT_REG,
    ADDR_PRESENT_POSITION,
    ADDR_RETURN_DELAY,
    ADDR_TORQUE_ENABLE,
    MODE_CURRENT_BASED_POSITION,
    DynamixelClient,
)
from .calibration import Calibration, JointMapping, MotorLimits, save_calibration
from .hand_model import CURRENT_UNIT_MA, HandModel, load_hand_model, model_file

__all__ = ["CalibrationSettings", "calibrate_hand", "main"]


@dataclass(frozen=True)
class CalibrationSettings:
    step_ticks: int = 10
    """Goal advance per step (ticks)."""
    step_period_s: float = 0.01
    """Time per step."""
    stall_ticks: int = 2
    """Movement below this per step counts as not moving."""
    stall_cycles: int = 8
    """Consecutive non-moving steps that make a stall."""
    max_travel_ticks: int = 8192
    """Give up (error) when no stop is found within this travel from the start."""
    margin_ticks: int = 10
    """Calibrated limits lie this far inside the stops, so range ends never press on them."""

    def __post_init__(self) -> None:
        if self.step_ticks <= 0 or self.step_period_s <= 0 or self.stall_cycles < 2 or self.max_travel_ticks <= 0:
            raise ValueError("calibration settings must be positive (stall_cycles >= 2)")


class CalibrationFailed(RuntimeError):
    pass


def _find_stop(client: DynamixelClient, sid: int, direction: int, settings: CalibrationSettings,
               sleep: Callable[[float], None]) -> tuple[int, int]:
    """Drive servo ``sid`` in ``direction`` (±1) until it stalls; (stop ticks, current raw)."""
    start = client.read(sid, ADDR_PRESENT_POSITION, 4, signed=True)
    goal = start
    previous = start
    still = 0
    while abs(goal - start) < settings.max_travel_ticks:
        goal += direction * settings.step_ticks
        client.write(sid, ADDR_GOAL_POSITION, 4, goal)
        sleep(settings.step_period_s)
        position = client.read(sid, ADDR_PRESENT_POSITION, 4, signed=True)
        still = still + 1 if abs(position - previous) < settings.stall_ticks else 0
        previous = position
        if still >= settings.stall_cycles:
            current = client.read(sid, ADDR_PRESENT_CURRENT_REG, 2, signed=True)
            # back off to the stop so the servo does not keep pressing
            client.write(sid, ADDR_GOAL_POSITION, 4, position)
            return position, current
    raise CalibrationFailed(f"servo {sid}: no hard stop within {settings.max_travel_ticks} ticks going {'+' if direction > 0 else '-'}")


def calibrate_hand(client: DynamixelClient, model: HandModel, settings: CalibrationSettings = CalibrationSettings(),
                   log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> Calibration:
    """Run the routine on an open client; returns the calibration (not yet saved)."""
    current = int(round(model.calibration_current_ma / CURRENT_UNIT_MA))
    limits = {}
    for joint in model.joints:
        sid = joint.motor
        client.ping(sid)
        client.write(sid, ADDR_TORQUE_ENABLE, 1, 0)
        client.write(sid, ADDR_RETURN_DELAY, 1, 0)
        client.write(sid, ADDR_OPERATING_MODE, 1, MODE_CURRENT_BASED_POSITION)
        client.write(sid, ADDR_CURRENT_LIMIT, 2, max(current, int(round(model.current_limit_ma / CURRENT_UNIT_MA))))
        client.write(sid, ADDR_GOAL_CURRENT, 2, current)
        client.write(sid, ADDR_GOAL_POSITION, 4, client.read(sid, ADDR_PRESENT_POSITION, 4, signed=True))
        client.write(sid, ADDR_TORQUE_ENABLE, 1, 1)
        low, low_current = _find_stop(client, sid, -1, settings, sleep)
        high, high_current = _find_stop(client, sid, +1, settings, sleep)
        client.write(sid, ADDR_GOAL_POSITION, 4, (low + high) // 2)
        lower, upper = low + settings.margin_ticks, high - settings.margin_ticks
        if upper - lower < 20:
            raise CalibrationFailed(f"{joint.name} (servo {sid}): stops {low}..{high} leave no travel")
        log(f"{joint.name:12s} servo {sid:2d}: stops {low} .. {high} ticks "
            f"(stall currents {low_current * CURRENT_UNIT_MA:.0f} / {high_current * CURRENT_UNIT_MA:.0f} mA)")
        limits[joint.name] = MotorLimits(sid, lower, upper)
    calibration = Calibration(model.name, model.fingerprint(), limits)
    # Park at the neutral pose at the normal current limit.
    mapping = JointMapping(model, calibration)
    neutral = mapping.to_ticks(np.array([j.neutral for j in model.joints]))
    normal = int(round(model.current_limit_ma / CURRENT_UNIT_MA))
    for joint, ticks in zip(model.joints, neutral, strict=True):
        client.write(joint.motor, ADDR_GOAL_CURRENT, 2, normal)
        client.write(joint.motor, ADDR_GOAL_POSITION, 4, int(ticks))
    return calibration


def _default_config_dir() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("orca_hand_driver")) / "config"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", default="/dev/ttyUSB0")
    parser.add_argument("--hand-model", default="orca_v1_right")
    parser.add_argument("--config-dir", default="", help="hand model directory (default: the installed one)")
    parser.add_argument("--calibration-file", default="",
                        help="output (default: <config-dir>/<hand-model>.calibration.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file (a backup is kept)")
    parser.add_argument("--step-ticks", type=int, default=CalibrationSettings.step_ticks)
    parser.add_argument("--step-period", type=float, default=CalibrationSettings.step_period_s)
    parser.add_argument("--torque-off-after", action="store_true", help="torque off when done")
    args = parser.parse_args(argv)
    config_dir = Path(args.config_dir) if args.config_dir else _default_config_dir()
    model = load_hand_model(model_file(config_dir, args.hand_model))
    out = Path(args.calibration_file) if args.calibration_file else config_dir / f"{model.name}.calibration.yaml"
    if out.exists() and not args.overwrite:
        print(f"refusing: {out} exists; pass --overwrite to replace it (a backup is kept)", file=sys.stderr)
        return 2
    settings = CalibrationSettings(step_ticks=args.step_ticks, step_period_s=args.step_period)
    client = DynamixelClient(args.port, model.baud_rate, retries=2)
    client.open()
    try:
        print(f"calibrating {model.name} on {args.port}: each joint goes to both hard stops "
              f"at {model.calibration_current_ma:.0f} mA; keep the hand free of objects", flush=True)
        calibration = calibrate_hand(client, model, settings)
        backup = save_calibration(out, calibration, model, overwrite=args.overwrite)
        print(f"wrote {out}" + (f" (previous one kept as {backup})" if backup else ""), flush=True)
        if args.torque_off_after:
            for sid in model.motor_ids:
                client.write(sid, ADDR_TORQUE_ENABLE, 1, 0)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
