"""trainer.reference_model_paths: a run on the reference model paths is bit-identical to one
made inside ``reference_paths()`` (how runs were made before the optimised paths existed), and
the optimised paths really are a different random stream under dropout (so the check can fail)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sernf_learner.configs import RunConfig
from sernf_learner.trainer import Trainer
from sernf_policy.fast_paths import reference_paths

TINY = {
    "seed": 1,
    "policy": {"obs_history": 1, "prefix_len": 2, "horizon": 4, "token_dim": 16, "flow_layers": 2,
               "flow_hidden": 16, "flow_heads": 2, "critic_d_model": 16, "critic_heads": 2,
               "critic_layers": 1, "critic_ff": 16, "num_samples": 4},
    "data": {"generate_point_demos": 4, "gamma": 0.99},
    "trainer": {"tensorboard": False, "progress": False, "log_every": 1, "eval": {"episodes": 0}},
    "il": {"steps": 3, "batch_size": 8},
}


def _run(tmp_path, name: str, reference_setting: bool, wrap: bool) -> dict[str, torch.Tensor]:
    data = {**TINY, "trainer": {**TINY["trainer"], "reference_model_paths": reference_setting},
            "data": {**TINY["data"], "offline_uri": str(tmp_path / "demos.zarr")}}
    trainer = Trainer(RunConfig.from_dict(data), tmp_path / name, "il")
    if wrap:
        with reference_paths():
            trainer.run()
    else:
        trainer.run()
    return load_file(str(tmp_path / name / "policy_il" / "model.safetensors"))


def test_reference_model_paths_reproduce_reference_runs(tmp_path):
    setting = _run(tmp_path, "setting", reference_setting=True, wrap=False)
    wrapped = _run(tmp_path, "wrapped", reference_setting=False, wrap=True)
    optimised = _run(tmp_path, "optimised", reference_setting=False, wrap=False)
    assert setting.keys() == wrapped.keys()
    for key in setting:
        assert torch.equal(setting[key], wrapped[key]), key
    # IL dropout 0.5: the optimised paths draw other masks, so their weights differ.
    assert any(not torch.equal(setting[k], optimised[k]) for k in setting)


def test_reference_model_paths_must_be_a_bool():
    with pytest.raises(ValueError, match="reference_model_paths"):
        RunConfig.from_dict({**TINY, "trainer": {**TINY["trainer"], "reference_model_paths": "yes"}})
