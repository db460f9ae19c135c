"""`make scissors-sim-data` (sernf.scissors_sim_data): the recording layout comes from the graph's
parameter files, the produced store and policy fit what the simulated scissors graph's policy
node, world and learner expect, and run_graph's preflight names the target. Tiny budgets: the
real target runs for minutes and is not run here."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import yaml
from sernf.graph import SOURCE_CONFIG_DIR
from sernf.run_graph import main as run_graph_main
from sernf.scissors_sim_data import graph_demo_layout, graph_fit_problems, graph_parameters
from sernf.scissors_sim_data import main as scissors_sim_data_main

ROOT = Path(__file__).resolve().parents[1]
CAN_RENDER = os.environ.get("MUJOCO_GL") in ("egl", "osmesa")


def test_layout_is_read_from_the_graphs_parameter_files():
    params = graph_parameters()
    layout = graph_demo_layout(params)
    world, policy, bridge = params["sim_world"], params["policy"], params["franka_bridge"]
    assert layout.image_keys == ("front_rgb", "under_rgb", "left_rgb")
    assert layout.camera_sources == ("front", "under", "wrist")  # the world's cameras behind those topics
    assert layout.image_size == world["image_size"] == 64
    assert (layout.joint_key, layout.pose_key) == ("hand_joints", "ee_pose")
    assert list(layout.hand_joint_names) == policy["hand_joint_names"]
    assert layout.control_rate_hz == policy["control_rate_hz"] == 10.0
    assert layout.max_translation_m == bridge["max_translation_m"]
    assert layout.max_rotation_rad == bridge["max_rotation_rad"]
    assert list(layout.workspace_low) == bridge["workspace_low"]
    spec = layout.observation_spec()
    assert {k: tuple(v.shape) for k, v in spec.items()} == {
        "front_rgb": (64, 64, 3), "under_rgb": (64, 64, 3), "left_rgb": (64, 64, 3),
        "hand_joints": (17,), "ee_pose": (7,)}


def test_a_params_file_changes_the_recording(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"sim_world": {"ros__parameters": {"image_size": 48}},
                                    "franka_bridge": {"ros__parameters": {"max_translation_m": 0.01}}}))
    layout = graph_demo_layout(graph_parameters(params_file=str(site)))
    assert layout.image_size == 48 and layout.max_translation_m == 0.01


def test_a_graph_the_recording_cannot_serve_is_refused():
    params = graph_parameters()
    bad = copy.deepcopy(params)
    bad["policy"]["observation_topics"][1] = "/cameras/side/image_raw"
    with pytest.raises(ValueError, match="under_rgb.*/cameras/side/image_raw.*does not publish"):
        graph_demo_layout(bad)
    bad = copy.deepcopy(params)
    bad["policy"]["control_rate_hz"] = 20.0
    with pytest.raises(ValueError, match="control_rate_hz"):
        graph_demo_layout(bad)
    bad = copy.deepcopy(params)
    bad["policy"]["observation_types"][3] = "float_array"
    with pytest.raises(ValueError, match="float_array"):
        graph_demo_layout(bad)


def test_make_target_writes_where_the_graph_reads():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^scissors-sim-data:.*\n\t(.+)$", makefile, flags=re.M)
    assert recipe, "no scissors-sim-data target"
    out = re.search(r"python -m sernf\.scissors_sim_data --out (\S+)", recipe.group(1))
    assert out, recipe.group(1)
    params = graph_parameters()
    train = f"{out.group(1)}/train"
    assert params["policy"]["checkpoint"] == params["learner"]["initial_checkpoint"] == f"{train}/policy_offline_rl"
    assert params["learner"]["offline_store_uri"] == f"{train}/offline_replay"
    assert (ROOT / params["learner"]["run_config"]).exists()


def test_preflight_names_the_target_for_the_sim_graph_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a checkout without results/
    assert run_graph_main(["scissors", "sim:=true", "--config-dir", str(SOURCE_CONFIG_DIR)]) == 2
    err = capsys.readouterr().err
    assert "results/scissors_sim/train/policy_offline_rl" in err and "make scissors-sim-data" in err
    assert run_graph_main(["scissors", "--config-dir", str(SOURCE_CONFIG_DIR),
                           "--set", f"policy.checkpoint={tmp_path}/none"]) == 2
    err = capsys.readouterr().err
    assert "make scissors-sim-data" not in err and "sernf-train" in err


@pytest.mark.skipif(not CAN_RENDER, reason="needs an offscreen MuJoCo renderer (MUJOCO_GL=egl or osmesa)")
def test_tiny_run_makes_a_store_and_policy_that_fit_the_graph(tmp_path):
    out = tmp_path / "scissors_sim"
    tiny = [f"{stage}.{key}={value}" for stage in ("il", "critic_warmup", "offline_rl")
            for key, value in (("steps", 2), ("batch_size", 4))]
    argv = ["--out", str(out), "--num-demos", "2", "--num-envs", "2", "--eval-episodes", "0", "--no-progress",
            "--set", "trainer.tensorboard=false", "--set", "trainer.log_every=1", *(a for item in tiny for a in ("--set", item))]
    assert scissors_sim_data_main(argv) == 0
    policy, store = out / "train" / "policy_offline_rl", out / "train" / "offline_replay"
    assert (policy / "config.json").exists() and (store / "zarr.json").exists()
    assert (out / "train" / "metrics.jsonl").read_text().strip()  # the trainer's metrics
    params = graph_parameters()
    assert graph_fit_problems(policy, store, params) == []
    from sernf_policy.policy import Policy

    config = Policy.load(policy).config
    assert (config.obs_history, config.prefix_len, config.horizon, config.action_dim) == (1, 3, 10, 24)
    assert {k: (tuple(v.shape), v.kind) for k, v in config.observation_spec.items()} == {
        "front_rgb": ((64, 64, 3), "rgb"), "under_rgb": ((64, 64, 3), "rgb"), "left_rgb": ((64, 64, 3), "rgb"),
        "hand_joints": ((17,), "lowdim"), "ee_pose": ((7,), "lowdim")}
    # The check can fail: a world at another image size, a node reading fewer keys.
    other = copy.deepcopy(params)
    other["sim_world"]["image_size"] = 224
    assert any("front_rgb" in p and "[224, 224, 3]" in p for p in graph_fit_problems(policy, store, other))
    other = copy.deepcopy(params)
    for key in ("observation_keys", "observation_types", "observation_topics"):
        other["policy"][key] = other["policy"][key][1:]
    assert any("'front_rgb' is not one of the policy node's" in p for p in graph_fit_problems(policy, store, other))
    # A second run into the same folder is refused (resume instead).
    assert scissors_sim_data_main(argv) == 2
