"""config/robot/teleop_rokoko.yaml names exactly the node's parameters, with the right types."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from teleop_rokoko.teleop_node import TeleopConfig

CONFIG = Path(__file__).resolve().parents[3] / "config" / "robot" / "teleop_rokoko.yaml"


def test_parameter_file_matches_the_config_dataclass() -> None:
    params = yaml.safe_load(CONFIG.read_text())["teleop_rokoko"]["ros__parameters"]
    fields = {f.name: f for f in dataclasses.fields(TeleopConfig)}
    assert set(params) == set(fields)
    for name, value in params.items():
        assert type(value) is type(fields[name].default), f"{name}: {value!r}"
    TeleopConfig(**params)


@pytest.mark.parametrize("bad", [{"hand_side": "both"}, {"stale_after_s": 0.0}, {"port": 70000},
                                 {"rate_hz": float("nan")}])
def test_invalid_settings_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        TeleopConfig(**bad)
