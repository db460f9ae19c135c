"""The scissors run configs (appendix G): the robot one builds the paper's model, the CPU
fallback trains on the same observation / action layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.configs import load_config
from sernf_learner.trainer import Trainer, build_policy_config
from sernf_policy.encoders import DinoV2Encoder
from sernf_policy.policy import Policy

REPO = Path(__file__).resolve().parents[3]
ROBOT_CONFIG = REPO / "config" / "train_scissors.yaml"
CPU_CONFIG = REPO / "config" / "train_scissors_cpu.yaml"

IMAGE_KEYS = ("front_rgb", "under_rgb", "left_rgb")
#: The robot's observation layout (policy_scissors.yaml): three cameras, ORCA joints, EE pose.
SCISSORS_OBS = {
    **{k: {"kind": "rgb", "shape": [224, 224, 3]} for k in IMAGE_KEYS},
    "hand_joints": {"kind": "lowdim", "shape": [17]},
    "ee_pose": {"kind": "lowdim", "shape": [7]},
}
A = 24  # 7 arm (position + quaternion) + 17 ORCA joints


def synthetic_episode(rng: np.random.Generator, length: int, success: bool) -> tuple[dict, dict]:
    steps = {k: rng.integers(0, 256, size=(length, 224, 224, 3), dtype=np.uint8) for k in IMAGE_KEYS}
    steps["hand_joints"] = rng.uniform(-0.5, 0.5, size=(length, 17)).astype(np.float32)
    steps["ee_pose"] = rng.uniform(-0.5, 0.5, size=(length, 7)).astype(np.float32)
    steps["action"] = rng.uniform(-1, 1, size=(length, A)).astype(np.float32)
    reward = np.zeros(length, np.float32)
    if success:  # scissors retrieved half-way, tape cut at the end (two sparse rewards)
        reward[length // 2] = reward[-1] = 1.0
    steps["reward"] = reward
    steps["timestamp"] = np.arange(length) / 10.0
    meta = {"source": "demo", "success": success, "terminated": success,
            "subtask_success": {"retrieve": success, "cut": success}}
    return steps, meta


@pytest.fixture(scope="module")
def scissors_store(tmp_path_factory) -> str:
    """Three short synthetic demonstrations (two successful) in the scissors layout."""
    path = tmp_path_factory.mktemp("scissors") / "demos.zarr"
    store = EpisodeStore(path, "a", StoreSpec(obs=SCISSORS_OBS, action_dim=A, control_rate_hz=10.0))
    rng = np.random.default_rng(0)
    for success in (True, False, True):
        store.append_episode(*synthetic_episode(rng, 16, success))
    return str(path)


def check_layout(config) -> None:
    p = config.policy
    assert (p.obs_history, p.prefix_len, p.horizon) == (1, 3, 10)
    assert p.image_backbone == "dinov2"  # one backbone shared by the three views
    assert config.data.gamma == pytest.approx(0.997)
    assert p.v_max == 2.0  # two sparse rewards


def test_robot_config_is_the_papers_model():
    config = load_config(ROBOT_CONFIG)
    check_layout(config)
    p = config.policy
    assert p.dinov2.model_name == "vit_large_patch14_reg4_dinov2"
    assert p.dinov2.image_size == 224 and p.dinov2.out_dim == 512 and p.dinov2.finetune == "norm"
    assert (p.token_dim, p.flow_layers, p.flow_hidden, p.flow_heads) == (512, 16, 256, 8)
    assert (p.critic_d_model, p.critic_heads, p.critic_layers, p.critic_ff, p.num_critics) == (512, 8, 3, 256, 2)
    assert p.num_samples == 64 and config.online_rl.num_samples == 24
    assert config.offline_rl.actor.bc_weight == config.online_rl.actor.bc_weight == pytest.approx(0.1)
    assert (config.online_rl.episodes_per_iteration, config.online_rl.updates_per_iteration) == (10, 500)
    assert config.trainer.device == "cuda"

    # One build of the real model (random weights: ~0.6 B parameters, two ViT-L encoders).
    policy_config = build_policy_config(
        load_config(ROBOT_CONFIG, {"policy.dinov2.pretrained": False}), SCISSORS_OBS, A)
    policy = Policy(policy_config)
    assert (policy.config.action_dim, policy.config.horizon, policy.config.prefix_len,
            policy.config.obs_history) == (A, 10, 3, 1)
    for encoder in (policy.actor_encoder, policy.critic_encoder):
        assert sorted(encoder.rgb_keys) == sorted(IMAGE_KEYS)
        assert list(encoder.image_encoders) == ["shared"]  # one ViT for all three views
        vit = encoder.image_encoders["shared"]
        assert isinstance(vit, DinoV2Encoder) and vit.feature_dim == 1024 and vit.num_tokens == 256
        assert len(vit.backbone.blocks) == 24
        # finetune "norm": the backbone's trainable parameters are exactly its LayerNorms.
        trainable = {n for n, p in vit.backbone.named_parameters() if p.requires_grad}
        assert trainable and all(".norm" in n or n.startswith("norm.") for n in trainable)
        # 3 views x 256 patch tokens + 2 low-dim keys x T=1
        assert encoder.num_tokens == 3 * 256 + 2
    vit_params = sum(p.numel() for p in policy.actor_encoder.image_encoders["shared"].parameters())
    assert vit_params == pytest.approx(303_711_744, rel=0.01)  # G1 "per backbone + projector"


def test_cpu_config_trains_il_and_critic_on_the_scissors_layout(scissors_store, tmp_path):
    config = load_config(CPU_CONFIG, {
        # Two IL updates: the flow's coupling heads start at zero (an identity flow), so the
        # first update's gradient cannot reach the encoder through the context yet.
        "data.offline_uri": scissors_store, "il.steps": 2, "critic_warmup.steps": 1,
        "trainer.progress": False, "trainer.checkpoint_every": 1,
    })
    check_layout(config)
    assert config.policy.dinov2.pretrained is False
    trainer = Trainer(config, tmp_path / "run", "il,critic_warmup")
    policy = trainer.policy
    assert (policy.config.action_dim, policy.config.horizon, policy.config.prefix_len) == (A, 10, 3)
    assert sorted(policy.actor_encoder.rgb_keys) == sorted(IMAGE_KEYS)
    assert list(policy.actor_encoder.image_encoders) == ["shared"]
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer.run()

    after_il = Policy.load(tmp_path / "run" / "policy_il").state_dict()
    after_critic = Policy.load(tmp_path / "run" / "policy_critic_warmup").state_dict()

    def changed(state: dict, prefix: str) -> bool:
        return any(not torch.equal(before[n], state[n]) for n in before if n.startswith(prefix))

    # IL moved the flow and the actor encoder's trainable parts, not the critic.
    assert changed(after_il, "flow.") and changed(after_il, "actor_encoder.")
    assert not changed(after_il, "critic.") and not changed(after_il, "critic_encoder.")
    # Critic warm-up moved the critic side only (the IL actor stays frozen, Stage II).
    assert changed(after_critic, "critic.") and changed(after_critic, "critic_encoder.")
    assert all(torch.equal(after_il[n], after_critic[n]) for n in after_il if n.startswith(("flow.", "actor_encoder.")))
    # Frozen ViT weights (finetune "norm": everything except the LayerNorms) did not move.
    qkv = "actor_encoder.image_encoders.shared.backbone.blocks.0.attn.qkv.weight"
    assert torch.equal(before[qkv], after_critic[qkv])

    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [v for m in metrics for k, v in m.items() if "loss" in k and isinstance(v, float)]
    assert losses and all(np.isfinite(losses))
