"""learner_node with labels_required_for: episodes wait for a person's label set, the node
reports how many wait, and a saved label set releases the episode (over real DDS)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import learner_node_harness as h  # noqa: E402

from sernf_data.labels import LabelSettings, LabelStore, RewardEvent  # noqa: E402
from sernf_data.store import EpisodeStore  # noqa: E402

pytestmark = pytest.mark.ros


def test_episodes_wait_for_labels_and_are_counted(processes, tmp_path):
    spec = h.point_spec()
    offline = h.make_store(tmp_path / "offline.zarr", h.point_episodes(4, seed=0, source="demo", prefix="demo"), spec)
    h.tiny_policy(spec, offline).save(tmp_path / "initial", metadata={"step": h.INITIAL_STEP, "stage": "offline_rl"})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(h.RUN_CONFIG))
    replay_root = tmp_path / "replay"
    actor = h.make_store(replay_root / "actor.zarr", h.point_episodes(3, seed=3, source="online", prefix="ep"))
    out = tmp_path / "learner"
    params = h.node_params(out, tmp_path / "initial", tmp_path / "offline.zarr", replay_root, tmp_path / "run.yaml",
                           reward_source="labels", labels_required_for=["online"], episodes_per_update=100)
    path = h.write_params(tmp_path / "learner_params.yaml", params)
    proc = processes.python("learner", "-m", "sernf_learner.learner_node", "--ros-args", "--params-file", str(path))
    peer = h.Peer()
    try:
        log = lambda: processes.log(proc)  # noqa: E731
        peer.wait_for(lambda: peer.checkpoint_at(h.INITIAL_STEP) is not None, 60.0, "the learner to start", log)
        online_uri = str(out / "online_replay.zarr")
        assert LabelStore(online_uri).settings() == LabelSettings(reward_source="labels", require_labels_for=("online",))
        peer.wait_subscriber()
        for eid in ("ep0", "ep1", "ep2"):
            peer.announce_episode(actor, eid)
        peer.wait_for(lambda: peer.diag_int("ingested") == 3 and peer.diag_int("episodes_awaiting_labels") == 3,
                      30.0, "3 ingested episodes awaiting labels", log)
        # A person labels one of them in the learner's online store.
        length = int(EpisodeStore(online_uri, mode="r").episode_metadata("ep1")["length"])
        LabelStore(online_uri).save("ep1", [RewardEvent(length - 1, 1.0, "reach")], {"reach": True},
                                    parent_version=0, author="tester")
        peer.wait_for(lambda: peer.diag_int("episodes_awaiting_labels") == 2, 30.0, "the count to drop", log)
        # What the learner's samplers see: only the labeled episode is eligible.
        from sernf_learner.transitions import ChunkTiming, TransitionSampler

        sampler = TransitionSampler(EpisodeStore(online_uri, mode="r"), ChunkTiming(T=1, P=1, H=2), 4, seed=0)
        ids = [m["id"] for m in sampler._snapshot.episodes]
        assert [ids[i] for i in sampler.eligible_episodes] == ["ep1"]
    finally:
        peer.close()
