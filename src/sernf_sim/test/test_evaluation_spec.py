"""Observation spec (sernf_sim.spec): validation and the plain-JSON round trip."""

import json

import numpy as np
import pytest

from sernf_sim.point_task import PointTask
from sernf_sim.spec import (
    ObsKeySpec,
    check_obs,
    spec_dumps,
    spec_from_json,
    spec_to_json,
)

SPEC = {
    "state": ObsKeySpec((6,), "lowdim"),
    "wrist_cam": ObsKeySpec(shape=[84, 84, 3], kind="rgb"),
}


def test_defaults_and_normalization():
    assert SPEC["state"].dtype == "float32"
    assert SPEC["wrist_cam"].dtype == "uint8"
    assert SPEC["wrist_cam"].shape == (84, 84, 3)  # lists become tuples
    assert ObsKeySpec((6,), "lowdim", dtype="f4") == SPEC["state"]
    hash(SPEC["state"])


def test_json_round_trip():
    data = spec_to_json(SPEC)
    text = json.dumps(data)
    assert spec_from_json(json.loads(text)) == SPEC
    assert spec_from_json(text) == SPEC
    assert spec_from_json(spec_dumps(SPEC)) == SPEC
    assert list(data["keys"]) == sorted(SPEC)
    assert (
        spec_from_json(spec_to_json(PointTask().observation_spec)) == PointTask().observation_spec
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(6,), kind="depth"), "kind"),
        (dict(shape=(84, 84), kind="rgb"), r"\(h, w, 3\)"),
        (dict(shape=(2, 3), kind="lowdim"), r"\(d,\)"),
        (dict(shape=(0,), kind="lowdim"), "positive"),
        (dict(shape=(6,), kind="lowdim", dtype="float64"), "float32"),
        (dict(shape=(4, 4, 3), kind="rgb", dtype="float32"), "uint8"),
        (dict(shape=(6,), kind="lowdim", dtype="nonsense"), "numpy dtype"),
    ],
)
def test_invalid_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObsKeySpec(**kwargs)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(extra=1), "exactly"),
        (lambda d: d["keys"]["state"].update(units="m"), "unknown"),
        (lambda d: d["keys"]["state"].pop("kind"), "missing"),
        (lambda d: d["keys"]["state"].update(shape=[6.0]), "list of ints"),
        (lambda d: d["keys"]["state"].update(shape=[True]), "list of ints"),
        (lambda d: d["keys"].update({"a/b": d["keys"]["state"]}), "invalid observation key"),
        (lambda d: d["keys"].update(action=d["keys"]["state"]), "reserved"),
        (lambda d: d["keys"].update({"cam.left": d["keys"]["state"]}), "invalid observation key"),
        (lambda d: d.update(keys={}), "non-empty"),
    ],
)
def test_untrusted_json_is_rejected(mutate, match):
    data = json.loads(json.dumps(spec_to_json(SPEC)))
    mutate(data)
    with pytest.raises(ValueError, match=match):
        spec_from_json(data)


def test_check_obs():
    obs = {
        "state": np.zeros((2, 3, 6), np.float32),
        "wrist_cam": np.zeros((2, 3, 84, 84, 3), np.uint8),
    }
    check_obs(SPEC, obs, leading=2)
    with pytest.raises(ValueError, match="keys"):
        check_obs(SPEC, {"state": obs["state"]}, leading=2)
    with pytest.raises(ValueError, match="dtype"):
        check_obs(SPEC, {**obs, "state": obs["state"].astype(np.float64)}, leading=2)
    with pytest.raises(ValueError, match="shape"):
        check_obs(SPEC, {**obs, "state": np.zeros((2, 3, 5), np.float32)}, leading=2)
    with pytest.raises(ValueError, match="leading"):
        check_obs(SPEC, {**obs, "state": np.zeros((2, 4, 6), np.float32)}, leading=2)
