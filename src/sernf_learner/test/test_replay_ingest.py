"""replay_ingest: where announced stores may live, what is ingested, the journal; and the
learner's resumable online state (learner_node.OnlineLearner, no ROS involved)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.replay_ingest import (
    Announcement,
    Journal,
    ReplayIngestor,
    ReplayLocations,
    ReplayRejected,
)

SPEC = StoreSpec(obs={"state": {"shape": [6], "kind": "lowdim"}}, action_dim=2, control_rate_hz=10.0)


def episode(length: int, seed: int = 0, key: str = "state", action_dim: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    reward = np.zeros(length, np.float32)
    reward[-1] = 1.0
    return {
        key: rng.normal(size=(length, 6)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, action_dim)).astype(np.float32),
        "reward": reward,
        "timestamp": np.arange(length) / 10.0,
    }


def meta(episode_id: str, **extra) -> dict:
    return {"id": episode_id, "source": "online", "success": True, "terminated": True,
            "subtask_success": {"grasp": True}, "operator": "sim", "extra": dict(extra)}


@pytest.fixture
def world(tmp_path: Path):
    """replay root with an actor store (episodes a: 12 steps, b: 7 steps), the learner's
    output dir with its online store, and an ingestor."""
    root = tmp_path / "replay"
    actor = EpisodeStore(str(root / "actor.zarr"), mode="a", spec=SPEC)
    actor.append_episode(episode(12, 1), meta("a", note="x"))
    actor.append_episode(episode(7, 2), meta("b"))
    out = tmp_path / "learner"
    online = EpisodeStore(str(out / "online_replay.zarr"), mode="a", spec=SPEC)
    locations = ReplayLocations(str(root), ("s3://bucket/replay/",), forbidden=(str(out),))
    return {"root": root, "actor": actor, "out": out, "online": online,
            "ingestor": ReplayIngestor(online, SPEC, locations), "tmp": tmp_path}


def snapshot(store: EpisodeStore) -> tuple:
    store.refresh()
    return store.generation, store.num_episodes, store.num_steps, tuple(store.episode_ids())


def rejected(world, ann: Announcement, reason: str, match: str | None = None) -> ReplayRejected:
    before = snapshot(world["online"])
    with pytest.raises(ReplayRejected, match=match) as info:
        world["ingestor"].ingest(ann)
    assert info.value.reason == reason, str(info.value)
    # Nothing ingested: the learner's store is unchanged, also as a fresh reader sees it.
    assert snapshot(world["online"]) == before
    assert snapshot(EpisodeStore(world["online"].uri, mode="r")) == before
    return info.value


# ---------------------------------------------------------------------------------- location


def test_locations_outside_the_replay_root_are_rejected(world, tmp_path):
    root = world["root"]
    outside = tmp_path / "elsewhere"
    EpisodeStore(str(outside / "x.zarr"), mode="a", spec=SPEC).append_episode(episode(5), meta("a"))
    (root / "link").symlink_to(outside)  # a symlink inside the root pointing out of it
    for uri, match in [
        (f"{root}/../../etc", "outside the replay root"),
        (f"{root}/actor.zarr/../../elsewhere/x.zarr", "outside the replay root"),
        (str(outside / "x.zarr"), "outside the replay root"),
        ("/etc/passwd", "outside the replay root"),
        (f"{root}/link/x.zarr", "outside the replay root"),
        (f"file://{outside}/x.zarr", "outside the replay root"),
        (str(world["out"] / "online_replay.zarr"), "outside the replay root"),
    ]:
        rejected(world, Announcement("a", uri, 5), "location", match)


def test_learner_directory_inside_the_root_is_refused(tmp_path):
    root = tmp_path / "replay"
    out = root / "learner"
    online = EpisodeStore(str(out / "online.zarr"), mode="a", spec=SPEC)
    online.append_episode(episode(5), meta("a"))
    locations = ReplayLocations(str(root), forbidden=(str(out),))
    with pytest.raises(ReplayRejected, match="learner's own directory") as info:
        ReplayIngestor(online, SPEC, locations).ingest(Announcement("a", str(out / "online.zarr"), 5))
    assert info.value.reason == "location" and online.num_episodes == 1


def test_url_locations_need_an_allowed_prefix_and_no_dot_segments():
    loc = ReplayLocations("", ("s3://bucket/replay/", "gs://other/r"))
    assert loc.resolve("s3://bucket/replay/actor1.zarr") == "s3://bucket/replay/actor1.zarr"
    assert loc.resolve("gs://other/r/a.zarr") == "gs://other/r/a.zarr"
    for uri in ["s3://bucket/elsewhere/a.zarr", "s3://bucket/replay-evil/a.zarr", "gs://other/rr/a.zarr",
                "s3://bucket/replay/../secret/a.zarr", "s3://bucket/replay/%2e%2e/secret",
                "s3://bucket/replay/%252e%252e/secret", "http://bucket/replay/a.zarr",
                "s3://bucket/replay/./a.zarr"]:
        with pytest.raises(ReplayRejected) as info:
            loc.resolve(uri)
        assert info.value.reason == "location", uri
    with pytest.raises(ReplayRejected, match="no replay_root configured"):
        loc.resolve("/tmp/a.zarr")
    with pytest.raises(ValueError, match="not a URL"):
        ReplayLocations("", ("/local/path",))


def test_a_symlink_that_stays_inside_the_root_is_fine(world):
    (world["root"] / "alias.zarr").symlink_to(world["root"] / "actor.zarr")
    result = world["ingestor"].ingest(Announcement("b", str(world["root"] / "alias.zarr"), 7))
    assert result.source_uri == os.path.realpath(world["root"] / "actor.zarr")


def test_relative_uris_resolve_against_the_working_directory(world, monkeypatch):
    monkeypatch.chdir(world["tmp"])
    result = world["ingestor"].ingest(Announcement("a", "replay/actor.zarr", 12))
    assert result.source_uri == os.path.realpath(world["root"] / "actor.zarr")


# ------------------------------------------------------------------------------------ ingest


def test_bad_announcements_are_rejected_with_their_reason_and_nothing_is_ingested(world):
    root = world["root"]
    actor_uri = str(root / "actor.zarr")
    rejected(world, Announcement("a", str(root / "missing.zarr"), 12), "store", "no replay store")
    (root / "junk").mkdir()
    (root / "junk" / "zarr.json").write_text("{not json")
    rejected(world, Announcement("a", str(root / "junk"), 12), "store", "cannot open")
    rejected(world, Announcement("zzz", actor_uri, 12), "episode", "no committed episode 'zzz'")
    rejected(world, Announcement("a", actor_uri, 13), "length", "has 12 steps, announced 13")
    rejected(world, Announcement("bad id!", actor_uri, 12), "announcement", "episode id")
    rejected(world, Announcement("a", actor_uri, 0), "announcement", "num_steps")
    rejected(world, Announcement("a", "", 12), "announcement", "empty uri")

    other_key = EpisodeStore(str(root / "other_key.zarr"), mode="a",
                             spec=StoreSpec(obs={"pos": {"shape": [6], "kind": "lowdim"}}, action_dim=2, control_rate_hz=10.0))
    other_key.append_episode(episode(5, key="pos"), meta("k"))
    rejected(world, Announcement("k", other_key.uri, 5), "schema", "observation 'state' missing")
    other_dim = EpisodeStore(str(root / "other_dim.zarr"), mode="a",
                             spec=StoreSpec(obs=SPEC.obs, action_dim=3, control_rate_hz=10.0))
    other_dim.append_episode(episode(5, action_dim=3), meta("d"))
    rejected(world, Announcement("d", other_dim.uri, 5), "schema", "action dim 3, expected 2")
    other_rate = EpisodeStore(str(root / "other_rate.zarr"), mode="a",
                              spec=StoreSpec(obs=SPEC.obs, action_dim=2, control_rate_hz=20.0))
    other_rate.append_episode(episode(5), meta("r"))
    rejected(world, Announcement("r", other_rate.uri, 5), "schema", "control rate 20 Hz")
    assert world["online"].num_episodes == 0


def test_an_episode_written_but_not_committed_is_rejected(world, monkeypatch):
    actor = world["actor"]

    def killed_before_commit(record):
        raise RuntimeError("killed before the commit")

    # The writer dies after writing the rows and before publishing the commit record
    # (replay.py's protocol step 3): the data is on disk, the episode does not exist.
    monkeypatch.setattr(actor, "_publish_record", killed_before_commit)
    with pytest.raises(RuntimeError, match="killed"):
        actor.append_episode(episode(9, 5), meta("half"))
    monkeypatch.undo()
    steps_on_disk = EpisodeStore(actor.uri, mode="r")._arrays()["action"].shape[0]
    assert steps_on_disk == 12 + 7 + 9  # the half-written rows really are there
    rejected(world, Announcement("half", actor.uri, 9), "episode", "written but not committed")


def test_a_valid_episode_is_copied_exactly_and_only_once(world):
    actor, online, ingestor = world["actor"], world["online"], world["ingestor"]
    result = ingestor.ingest(Announcement("a", actor.uri, 12, "online", 1.0))
    assert not result.already_present and result.num_steps == 12 and result.episode_return == pytest.approx(1.0)
    src_steps, src_meta = actor.read_episode("a")
    reader = EpisodeStore(online.uri, mode="r")
    steps, copied = reader.read_episode("a")
    assert set(steps) == set(src_steps)
    for key in steps:
        np.testing.assert_array_equal(steps[key], src_steps[key])
        assert steps[key].dtype == src_steps[key].dtype
    for key in ("id", "source", "success", "subtask_success", "terminated", "operator", "length", "return"):
        assert copied[key] == src_meta[key], key
    assert copied["extra"]["note"] == "x"
    assert copied["extra"]["ingest"]["uri"] == os.path.realpath(actor.uri)

    # Announced again (or re-processed after a crash): recognised, not copied twice.
    before = snapshot(online)
    again = ingestor.ingest(Announcement("a", actor.uri, 12))
    assert again.already_present and again.num_steps == 12
    assert snapshot(online) == before

    # The same id from another actor store is a clash, not the same episode.
    other = EpisodeStore(str(world["root"] / "actor2.zarr"), mode="a", spec=SPEC)
    other.append_episode(episode(12, 9), meta("a"))
    rejected(world, Announcement("a", other.uri, 12), "duplicate", "already ingested from")


def test_an_episode_committed_after_an_earlier_look_is_found(world):
    actor, ingestor = world["actor"], world["ingestor"]
    rejected(world, Announcement("late", actor.uri, 4), "episode")
    actor.append_episode(episode(4, 3), meta("late"))
    assert ingestor.ingest(Announcement("late", actor.uri, 4)).num_steps == 4


# ----------------------------------------------------------------------------------- journal


def test_journal_replay_after_a_crash_returns_only_unfinished_entries(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    seqs = [journal.accept(Announcement(f"e{i}", f"/r/s{i}.zarr", 10 + i, "online", float("nan"))) for i in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    journal.mark(0, "ingested", uri="/r/s0.zarr", episode_id="e0")
    journal.mark(0, "done", step=100)
    journal.mark(1, "rejected", reason="length", detail="x")
    journal.mark(2, "ingested", uri="/r/s2.zarr", episode_id="e2")  # ingested, not trained: pending
    # "Crash": no close(); a record torn mid-write at the end of the file.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"op": "done", "seq": 3, "st')

    again = Journal(path)
    pending = again.pending()
    assert [e.seq for e in pending] == [2, 3, 4]
    assert pending[1].announcement == Announcement("e3", "/r/s3.zarr", 13, "online", pending[1].announcement.episode_return)
    assert np.isnan(pending[0].announcement.episode_return)
    assert [e.seq for e in again.pending(done={2})] == [3, 4]  # e.g. covered by a checkpoint
    assert again.ingested_episode(2) == ("/r/s2.zarr", "e2") and again.ingested_episode(3) is None
    assert again.status(0) == "done" and again.status(1) == "rejected" and again.status(3) == "pending"
    # The torn record was cut off: new records land on lines of their own.
    assert again.accept(Announcement("e5", "/r/s5.zarr", 5)) == 5
    again.mark(3, "done", step=200)
    third = Journal(path)
    assert [e.seq for e in third.pending()] == [2, 4, 5]
    assert third.counts() == {"accepted": 6, "rejected": 1, "done": 2, "records": 11}
    for line in path.read_text().splitlines():
        json.loads(line)


def test_journal_refuses_unknown_ops_and_entries(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    with pytest.raises(KeyError):
        journal.mark(3, "done")
    seq = journal.accept(Announcement("e", "/r", 1))
    with pytest.raises(ValueError, match="unknown journal op"):
        journal.mark(seq, "trained")
    (tmp_path / "bad.jsonl").write_text('{"op": "accepted"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        Journal(tmp_path / "bad.jsonl")


# ----------------------------------------------------------- learner state (no ROS): resume


def _tiny_policy(spec: StoreSpec, critic: bool = True):
    import torch

    from sernf_policy.encoders import EncoderConfig
    from sernf_policy.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    config = PolicyConfig.create(
        {k: {"kind": v.kind, "shape": list(v.shape)} for k, v in spec.obs.items()}, action_dim=spec.action_dim,
        obs_history=2, prefix_len=2, horizon=4, encoder=EncoderConfig(token_dim=16),
        flow=dict(num_layers=2, hidden_dim=16, num_heads=2),
        critic=dict(d_model=16, num_heads=2, num_layers=1, ff_dim=16, num_bins=11) if critic else False,
        num_samples=2,
    )
    return Policy(config)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_online_learner_resumes_exactly_where_it_stopped(world, tmp_path, precision):
    """Also in bf16 mixed precision (the run config's trainer.precision): it trains in it and
    resumes as exactly."""
    pytest.importorskip("rclpy")
    import torch

    from sernf_learner.learner_node import OnlineLearner, latest_checkpoint, read_state
    from sernf_learner.online_rl import OnlineRLConfig

    torch.set_num_threads(1)
    offline = EpisodeStore(str(tmp_path / "offline.zarr"), mode="a", spec=SPEC)
    for i in range(3):
        offline.append_episode(episode(15, 10 + i), {**meta(f"demo{i}"), "source": "demo"})
    policy = _tiny_policy(SPEC)
    snap = offline.load_arrays()
    policy.fit_normalizers(snap.arrays["action"], {"state": snap.arrays["state"]})
    config = OnlineRLConfig(batch_size=8, rho=0.5)
    ingestor = world["ingestor"]
    ingestor.ingest(Announcement("a", world["actor"].uri, 12))
    out = world["out"]
    learner = OnlineLearner(policy, config, offline, world["online"].uri, out, gamma=0.99, seed=1, step=50,
                            precision=precision)
    assert learner.rl.precision == precision
    first = learner.run_round(3)
    assert first is not None and learner.step == 53 and first["online/episodes"] == 1
    saved = learner.save_checkpoint({0})
    assert saved.step == 53 and latest_checkpoint(out) == saved.path
    assert read_state(saved.path)["done_seqs"] == [0]
    header = json.loads((saved.policy_dir / "config.json").read_text())
    assert header["metadata"] == {"step": 53, "stage": "online_rl"} and header["weights_sha256"] == saved.sha256

    # More data arrives; the uninterrupted learner trains a second round...
    ingestor.ingest(Announcement("b", world["actor"].uri, 7))
    state_at_save = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    rng = torch.get_rng_state()
    learner.run_round(3)
    expected = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    # ... and a learner restarted from the checkpoint does exactly the same.
    torch.manual_seed(999)  # a fresh process has other RNG states: the checkpoint restores them
    resumed, state = OnlineLearner.resume(saved.path, config, offline, world["online"].uri, out,
                                          gamma=0.99, seed=1, device="cpu", precision=precision)
    assert resumed.step == 53 and resumed.rl.precision == precision and resumed.rounds == 1 and state["done_seqs"] == [0]
    for k, v in resumed.policy.state_dict().items():
        assert torch.equal(v, state_at_save[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    resumed.run_round(3)
    assert resumed.step == 56
    different = [k for k, v in resumed.policy.state_dict().items() if not torch.equal(v, expected[k])]
    assert not different, different[:5]


def test_online_learner_needs_a_critic_and_a_matching_offline_store(world, tmp_path):
    pytest.importorskip("rclpy")
    from sernf_learner.learner_node import OnlineLearner
    from sernf_learner.online_rl import OnlineRLConfig

    offline = EpisodeStore(str(tmp_path / "offline.zarr"), mode="a", spec=SPEC)
    offline.append_episode(episode(15), {**meta("d"), "source": "demo"})
    with pytest.raises(ValueError, match="no critic"):
        OnlineLearner(_tiny_policy(SPEC, critic=False), OnlineRLConfig(), offline, world["online"].uri,
                      world["out"], gamma=0.99, seed=0, step=0)
    other = StoreSpec(obs=SPEC.obs, action_dim=3, control_rate_hz=10.0)
    with pytest.raises(ValueError, match="action dim 3, expected 2"):
        OnlineLearner(_tiny_policy(other), OnlineRLConfig(), offline, world["online"].uri,
                      world["out"], gamma=0.99, seed=0, step=0)
