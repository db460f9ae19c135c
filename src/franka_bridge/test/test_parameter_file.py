"""config/robot/franka_bridge.yaml declares only the node's parameters, with valid values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from franka_bridge.config import FrankaBridgeConfig

ROBOT_PARAMS = Path(__file__).resolve().parents[3] / "config" / "robot" / "franka_bridge.yaml"


def test_robot_parameter_file_matches_the_node() -> None:
    section = yaml.safe_load(ROBOT_PARAMS.read_text())["franka_bridge"]["ros__parameters"]
    declared = {f.name for f in dataclasses.fields(FrankaBridgeConfig)}
    assert set(section) <= declared, f"undeclared: {sorted(set(section) - declared)}"
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    cfg = FrankaBridgeConfig(**values)  # validates
    assert cfg.target_topic.endswith("/equilibrium_pose") and cfg.recovery_action
