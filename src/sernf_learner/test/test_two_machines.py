"""The learner on another machine (docs/two_machines.md): it reads the robot's replay store and
the demonstrations through fsspec URLs, and names its checkpoints as the robot PC sees them."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.configs import DataConfig, PolicySpec, RunConfig, TrainerConfig
from sernf_learner.il import ILConfig
from sernf_learner.learner_node import LearnerNodeConfig
from sernf_learner.replay_ingest import (
    Announcement,
    ReplayIngestor,
    ReplayLocations,
    ReplayRejected,
)
from sernf_learner.trainer import Trainer

SPEC = StoreSpec(obs={"state": {"shape": [4], "kind": "lowdim"}}, action_dim=2, control_rate_hz=10.0)


def episode(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    reward = np.zeros(length, np.float32)
    reward[-1] = 1.0
    return {"state": rng.normal(size=(length, 4)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
            "reward": reward, "timestamp": np.arange(length) / 10.0}


def meta(episode_id: str) -> dict:
    return {"id": episode_id, "source": "online", "success": True, "terminated": True}


def test_learner_ingests_the_robots_replay_store_through_a_url(tmp_path):
    # The robot PC's recorder writes to object storage (memory:// stands in for s3://: the
    # same fsspec code path, without credentials or a network).
    bucket = f"memory://sernf-{uuid.uuid4().hex[:8]}"
    robot_store = EpisodeStore(f"{bucket}/replay/online.zarr", mode="a", spec=SPEC)
    robot_store.append_episode(episode(12, 1), meta("ep-1"))
    elsewhere = EpisodeStore(f"{bucket}/private/other.zarr", mode="a", spec=SPEC)
    elsewhere.append_episode(episode(5, 2), meta("ep-x"))

    online = EpisodeStore(str(tmp_path / "learner" / "online_replay.zarr"), mode="a", spec=SPEC)
    ingestor = ReplayIngestor(online, SPEC, ReplayLocations("", (f"{bucket}/replay/",)))
    result = ingestor.ingest(Announcement("ep-1", f"{bucket}/replay/online.zarr", 12, "online", 1.0))
    assert online.num_episodes == 1 and online.num_steps == 12
    steps, _ = online.read_episode(result.episode_id)
    np.testing.assert_array_equal(steps["state"], episode(12, 1)["state"])

    # A store outside the trusted prefix, and the path-only form of a local store, are refused.
    with pytest.raises(ReplayRejected, match="allowed URL prefix"):
        ingestor.ingest(Announcement("ep-x", f"{bucket}/private/other.zarr", 5, "online", 1.0))
    with pytest.raises(ReplayRejected, match="no replay_root"):
        ingestor.ingest(Announcement("ep-1", str(tmp_path / "online.zarr"), 12, "online", 1.0))
    assert online.num_episodes == 1


def test_trainer_reads_the_demonstrations_through_a_url(tmp_path):
    bucket = f"memory://sernf-{uuid.uuid4().hex[:8]}"
    demos = EpisodeStore(f"{bucket}/demos.zarr", mode="a", spec=SPEC)
    for i in range(3):
        demos.append_episode(episode(10, 10 + i), {**meta(f"demo-{i}"), "source": "demo"})
    config = RunConfig(
        policy=PolicySpec(obs_history=1, prefix_len=1, horizon=3, token_dim=16, flow_layers=2, flow_hidden=16,
                          flow_heads=2, critic_d_model=16, critic_heads=2, critic_layers=1, critic_ff=16,
                          num_samples=2),
        data=DataConfig(offline_uri=f"{bucket}/demos.zarr"),
        trainer=TrainerConfig(tensorboard=False, progress=False),
        il=ILConfig(steps=2, batch_size=8),
    )
    trainer = Trainer(config, tmp_path / "run", "il")
    assert trainer.offline_store.uri == f"{bucket}/demos.zarr" and trainer.offline_store.num_episodes == 3
    trainer.run()
    assert (tmp_path / "run" / "policy_il" / "config.json").is_file()


def test_checkpoints_are_announced_where_the_robot_pc_mounts_the_output_dir(tmp_path):
    out = tmp_path / "learner"
    policy_dir = out / "checkpoints" / "step-00000500" / "policy"
    same_path = LearnerNodeConfig(output_dir=str(out))
    assert same_path.announced_location(policy_dir, out) == str(policy_dir)
    mapped = LearnerNodeConfig(output_dir=str(out), announce_output_dir="/mnt/trainer/learner")
    assert mapped.announced_location(policy_dir, out) == "/mnt/trainer/learner/checkpoints/step-00000500/policy"
    for bad in ("relative/dir", "s3://bucket/learner"):
        with pytest.raises(ValueError, match="announce_output_dir"):
            LearnerNodeConfig(output_dir=str(out), announce_output_dir=bad)
    with pytest.raises(ValueError):  # a directory outside output_dir has no mapped name
        mapped.announced_location(Path("/elsewhere/policy"), out)
