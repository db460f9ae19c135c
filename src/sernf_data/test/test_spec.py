"""The observation contract (sernf_data.spec): one definition for sim, replay and model."""

import sys

import numpy as np
import pytest

from sernf_data.spec import ObsKeySpec, check_observations, parse_observation_spec

SPEC = {"state": ObsKeySpec((6,), "lowdim"), "wrist_rgb": ObsKeySpec(shape=[84, 84, 3], kind="rgb")}


def test_dtype_follows_kind_and_dict_round_trip():
    assert SPEC["state"].dtype == np.float32 and SPEC["wrist_rgb"].dtype == np.uint8
    assert SPEC["wrist_rgb"].shape == (84, 84, 3)  # lists become tuples
    for key_spec in SPEC.values():
        assert ObsKeySpec.from_dict(key_spec.to_dict()) == key_spec
    hash(SPEC["state"])


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (4, 4), "kind": "rgb"}, "rgb"),
    ({"shape": (4, 2), "kind": "lowdim"}, "lowdim"),
    ({"shape": (0,), "kind": "lowdim"}, "positive"),
    ({"shape": (3,), "kind": "depth"}, "kind"),
])
def test_invalid_key_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObsKeySpec(**kwargs)


@pytest.mark.parametrize("key", ["a.b", "a/b", "x:features", "action", "reward", ""])
def test_keys_that_cannot_name_a_module_or_zarr_array_are_rejected(key):
    with pytest.raises(ValueError):
        parse_observation_spec({key: {"shape": [3], "kind": "lowdim"}})


def test_check_observations():
    obs = {"state": np.zeros((2, 3, 6), np.float32), "wrist_rgb": np.zeros((2, 3, 84, 84, 3), np.uint8)}
    check_observations(SPEC, obs, leading=2)
    with pytest.raises(ValueError, match="keys"):
        check_observations(SPEC, {"state": obs["state"]}, leading=2)
    with pytest.raises(ValueError, match="dtype"):
        check_observations(SPEC, {**obs, "state": obs["state"].astype(np.float64)}, leading=2)
    with pytest.raises(ValueError, match="shape"):
        check_observations(SPEC, {**obs, "state": np.zeros((2, 3, 5), np.float32)}, leading=2)
    with pytest.raises(ValueError, match="leading"):
        check_observations(SPEC, {**obs, "state": np.zeros((2, 4, 6), np.float32)}, leading=2)


def test_the_contract_is_torch_free():
    # The simulator (numpy-only) imports this module; it must not drag torch in.
    import subprocess
    code = "import sys, sernf_data.spec; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
