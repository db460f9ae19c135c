"""Hand model files: joint names and order, servo ids and wiring signs, ranges, bus settings."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["HandModel", "Joint", "load_hand_model", "model_file"]

MAX_SERVO_ID = 252  # Protocol 2.0: 253..255 are header/broadcast bytes
BAUD_REGISTER = {1_000_000: 3, 2_000_000: 4, 3_000_000: 5, 4_000_000: 6}
CURRENT_UNIT_MA = 1.34  # XC330 current register unit


@dataclass(frozen=True)
class Joint:
    name: str
    motor: int
    """Dynamixel id of the servo driving this joint."""
    inverted: bool
    """The servo's ticks decrease as the joint angle increases."""
    lower: float
    """Range of motion, rad."""
    upper: float
    neutral: float
    """Rest pose, rad."""


@dataclass(frozen=True)
class HandModel:
    name: str
    baud_rate: int
    current_limit_ma: float
    calibration_current_ma: float
    model_numbers: tuple[int, ...]
    min_firmware: int
    joints: tuple[Joint, ...]

    def __post_init__(self) -> None:
        if not self.joints:
            raise ValueError(f"hand model {self.name!r} has no joints")
        names = [j.name for j in self.joints]
        motors = [j.motor for j in self.joints]
        if len(set(names)) != len(names):
            raise ValueError(f"hand model {self.name!r}: duplicate joint names")
        if len(set(motors)) != len(motors):
            raise ValueError(f"hand model {self.name!r}: two joints share a servo id")
        if self.baud_rate not in BAUD_REGISTER:
            raise ValueError(f"hand model {self.name!r}: baud rate {self.baud_rate} is not one of {sorted(BAUD_REGISTER)}")
        for current in (self.current_limit_ma, self.calibration_current_ma):
            if not (0 < current <= 2000):
                raise ValueError(f"hand model {self.name!r}: current limit {current} mA out of (0, 2000]")
        for j in self.joints:
            if not (1 <= j.motor <= MAX_SERVO_ID):
                raise ValueError(f"joint {j.name}: servo id {j.motor} out of 1..{MAX_SERVO_ID}")
            if not (math.isfinite(j.lower) and math.isfinite(j.upper) and j.lower < j.upper):
                raise ValueError(f"joint {j.name}: range [{j.lower}, {j.upper}] is not an interval")
            if not (j.lower <= j.neutral <= j.upper):
                raise ValueError(f"joint {j.name}: neutral pose {j.neutral} outside its range")

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def motor_ids(self) -> tuple[int, ...]:
        return tuple(j.motor for j in self.joints)

    def fingerprint(self) -> str:
        """Hash of what a calibration depends on (joint order, wiring, ranges): a calibration
        made for another hand or another wiring does not match."""
        essentials = [[j.name, j.motor, j.inverted, round(j.lower, 9), round(j.upper, 9)] for j in self.joints]
        text = json.dumps({"name": self.name, "joints": essentials}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_file(config_dir: Path, name: str) -> Path:
    return Path(config_dir) / f"{name}.yaml"


def load_hand_model(path: Path) -> HandModel:
    """Read a hand model file; ValueError with the reason when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"hand model file {path} not found")
    data = yaml.safe_load(path.read_text())
    try:
        joints = tuple(
            Joint(name=str(j["name"]), motor=int(j["motor"]), inverted=bool(j["inverted"]),
                  lower=math.radians(float(j["range_deg"][0])), upper=math.radians(float(j["range_deg"][1])),
                  neutral=math.radians(float(j["neutral_deg"])))
            for j in data["joints"])
        return HandModel(
            name=str(data["name"]), baud_rate=int(data["baud_rate"]),
            current_limit_ma=float(data["current_limit_ma"]),
            calibration_current_ma=float(data.get("calibration_current_ma", data["current_limit_ma"])),
            model_numbers=tuple(int(m) for m in data["model_numbers"]),
            min_firmware=int(data["min_firmware"]), joints=joints)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"hand model file {path} is malformed: missing or wrong field {exc}") from exc
