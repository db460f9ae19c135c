"""Calibration: per-motor hard-stop limits in ticks and the joint↔tick mapping they define.

The calibration routine finds each servo's two hard stops (ticks). The joint's range of motion
[lower, upper] (rad, from the hand model) is mapped linearly onto them, as the ORCA lab's own
tooling does:

    ticks = motor_lower + (q − lower) · ratio          (inverted: motor_lower + (upper − q) · ratio)
    ratio = (motor_upper − motor_lower) / (upper − lower)   ticks per joint radian

The file records the hand model's name and fingerprint so a calibration made for another hand
(or the same hand re-wired) is refused, and it is never overwritten silently.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .hand_model import HandModel

__all__ = ["Calibration", "CalibrationError", "JointMapping", "MotorLimits", "load_calibration",
           "save_calibration"]

FORMAT = "orca_hand_calibration/1"
TICKS_PER_RAD = 4096 / (2 * math.pi)
# Current-based position mode accepts goals in ±1 048 575 ticks (256 turns).
GOAL_LIMIT_TICKS = 1_048_575
VELOCITY_UNIT_RPM = 0.229


class CalibrationError(ValueError):
    """A calibration file is missing, malformed or made for another hand."""


@dataclass(frozen=True)
class MotorLimits:
    motor: int
    lower_ticks: int
    upper_ticks: int


@dataclass(frozen=True)
class Calibration:
    hand_model: str
    hand_model_hash: str
    limits: dict[str, MotorLimits]
    """By joint name."""
    created: str = ""

    def check_against(self, model: HandModel) -> None:
        """Raise CalibrationError when this calibration does not belong to ``model``."""
        if self.hand_model != model.name:
            raise CalibrationError(f"calibration is for hand model {self.hand_model!r}, not {model.name!r}")
        if self.hand_model_hash != model.fingerprint():
            raise CalibrationError(
                f"calibration fingerprint {self.hand_model_hash} does not match hand model "
                f"{model.name} ({model.fingerprint()}): joints, wiring or ranges changed; recalibrate")
        for joint in model.joints:
            limits = self.limits.get(joint.name)
            if limits is None:
                raise CalibrationError(f"calibration lacks joint {joint.name}")
            if limits.motor != joint.motor:
                raise CalibrationError(f"calibration has servo {limits.motor} for {joint.name}, the model {joint.motor}")
            if not (-GOAL_LIMIT_TICKS <= limits.lower_ticks < limits.upper_ticks <= GOAL_LIMIT_TICKS):
                raise CalibrationError(
                    f"calibration of {joint.name}: limits [{limits.lower_ticks}, {limits.upper_ticks}] ticks "
                    f"are not an increasing pair within ±{GOAL_LIMIT_TICKS}")
            if limits.upper_ticks - limits.lower_ticks < 20:
                raise CalibrationError(f"calibration of {joint.name}: travel of {limits.upper_ticks - limits.lower_ticks} ticks is implausibly short")
        extra = set(self.limits) - set(model.joint_names)
        if extra:
            raise CalibrationError(f"calibration has joints the model lacks: {sorted(extra)}")


def save_calibration(path: Path, calibration: Calibration, model: HandModel, overwrite: bool = False) -> Path | None:
    """Write the file; refuse to replace an existing one unless ``overwrite``, and then keep the
    old one as ``<name>.bak-<timestamp>`` (returned)."""
    calibration.check_against(model)
    path = Path(path)
    backup = None
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"calibration file {path} exists; pass --overwrite to replace it (a backup is kept)")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        backup = path.with_name(f"{path.name}.bak-{stamp}")
        shutil.copy2(path, backup)
    joints = {}
    for joint in model.joints:
        limits = calibration.limits[joint.name]
        ratio = (limits.upper_ticks - limits.lower_ticks) / (joint.upper - joint.lower)
        joints[joint.name] = {"motor": limits.motor, "lower_ticks": limits.lower_ticks,
                              "upper_ticks": limits.upper_ticks, "ticks_per_rad": round(ratio, 6)}
    data = {"format": FORMAT, "hand_model": model.name, "hand_model_hash": model.fingerprint(),
            "created": calibration.created or datetime.datetime.now().isoformat(timespec="seconds"),
            "joints": joints}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# ORCA hand calibration (written by `ros2 run orca_hand_driver calibrate`)\n"
                   + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)  # atomic: a crash never leaves half a calibration
    return backup


def load_calibration(path: Path, model: HandModel) -> Calibration:
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} not found: run `ros2 run orca_hand_driver calibrate` first")
    try:
        data = yaml.safe_load(path.read_text())
        if data.get("format") != FORMAT:
            raise CalibrationError(f"calibration file {path}: format {data.get('format')!r}, expected {FORMAT!r}")
        limits = {name: MotorLimits(int(j["motor"]), int(j["lower_ticks"]), int(j["upper_ticks"]))
                  for name, j in data["joints"].items()}
        calibration = Calibration(str(data["hand_model"]), str(data["hand_model_hash"]), limits,
                                  str(data.get("created", "")))
        stored_ratios = {name: float(j["ticks_per_rad"]) for name, j in data["joints"].items()}
    except (AttributeError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"calibration file {path} is malformed: {exc}") from exc
    calibration.check_against(model)
    for joint in model.joints:
        lim = limits[joint.name]
        ratio = (lim.upper_ticks - lim.lower_ticks) / (joint.upper - joint.lower)
        if not math.isclose(ratio, stored_ratios[joint.name], rel_tol=1e-3):
            raise CalibrationError(f"calibration of {joint.name}: stored ratio {stored_ratios[joint.name]} "
                                   f"disagrees with its limits ({ratio:.6f}); the file was edited by hand?")
    return calibration


class JointMapping:
    """Vectorised joint (rad) ↔ servo (ticks) conversion in the hand model's joint order."""

    def __init__(self, model: HandModel, calibration: Calibration) -> None:
        calibration.check_against(model)
        self.model = model
        self.lower = np.array([j.lower for j in model.joints])
        self.upper = np.array([j.upper for j in model.joints])
        self.inverted = np.array([j.inverted for j in model.joints])
        self.sign = np.where(self.inverted, -1.0, 1.0)
        lim = [calibration.limits[j.name] for j in model.joints]
        self.motor_lower = np.array([m.lower_ticks for m in lim], float)
        self.motor_upper = np.array([m.upper_ticks for m in lim], float)
        self.ratio = (self.motor_upper - self.motor_lower) / (self.upper - self.lower)

    def clamp(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.lower, self.upper)

    def to_ticks(self, q: np.ndarray) -> np.ndarray:
        """Joint angles (rad, clamped to the ranges) → goal ticks (int64)."""
        q = self.clamp(np.asarray(q, float))
        offset = np.where(self.inverted, self.upper - q, q - self.lower)
        return np.rint(self.motor_lower + offset * self.ratio).astype(np.int64)

    def to_joints(self, ticks: np.ndarray) -> np.ndarray:
        """Present ticks → joint angles (rad); not clamped (a joint pushed past its calibrated
        range reads as such)."""
        offset = (np.asarray(ticks, float) - self.motor_lower) / self.ratio
        return np.where(self.inverted, self.upper - offset, self.lower + offset)

    def velocity_to_joints(self, raw_velocity: np.ndarray) -> np.ndarray:
        """Present velocity (0.229 rpm units) → joint velocity (rad/s)."""
        ticks_per_s = np.asarray(raw_velocity, float) * VELOCITY_UNIT_RPM / 60.0 * 4096
        return self.sign * ticks_per_s / self.ratio
