"""learner_node over real DDS: ingest announced episodes, train in rounds, announce checkpoints,
reject bad announcements, queue during training, resume after SIGKILL.

Each test starts learner_node in its own process (isolated ROS domain, see conftest.py) with a
tiny Policy (with critic) saved as the initial checkpoint at step 100 and a small offline store
of point-task demos; the test process plays the actors: it writes episodes into an actor store
under the replay root and announces them on /sernf/replay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import learner_node_harness as h
import pytest
import yaml

from sernf_data.store import EpisodeStore, StoreSpec

INIT = h.INITIAL_STEP


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Offline store, initial checkpoints (with / without critic), run config: shared, read-only."""
    root = tmp_path_factory.mktemp("learner_data")
    spec = h.point_spec()
    offline = h.make_store(root / "offline.zarr", h.point_episodes(6, seed=0, source="demo", prefix="demo"), spec)
    h.tiny_policy(spec, offline).save(root / "initial", metadata={"step": INIT, "stage": "offline_rl"})
    h.tiny_policy(spec, offline, critic=False).save(root / "no_critic", metadata={"step": 7, "stage": "il"})
    (root / "run.yaml").write_text(yaml.safe_dump(h.RUN_CONFIG))
    return {"root": root, "offline": root / "offline.zarr", "initial": root / "initial",
            "no_critic": root / "no_critic", "run_config": root / "run.yaml"}


@pytest.fixture
def world(data, tmp_path):
    """A replay root with an actor store of 6 episodes ("ep0".."ep5"), and the learner's output dir."""
    replay_root = tmp_path / "replay"
    actor = h.make_store(replay_root / "actor.zarr", h.point_episodes(6, seed=3, source="online", prefix="ep"))
    return {**data, "replay_root": replay_root, "actor": actor, "out": tmp_path / "learner", "tmp": tmp_path}


@pytest.fixture
def start_learner(processes, world):
    """start_learner(**params) -> (process, peer); the peer is shared between restarts."""
    peer = h.Peer()
    count = 0

    def start(**params):
        nonlocal count
        count += 1
        path = h.write_params(world["tmp"] / f"learner_params_{count}.yaml", h.node_params(
            world["out"], world["initial"], world["offline"], world["replay_root"], world["run_config"], **params))
        proc = processes.python(f"learner_{count}", "-m", "sernf_learner.learner_node", "--ros-args",
                                "--params-file", str(path))
        peer.node_log = lambda: processes.log(proc)
        return proc, peer

    yield start
    peer.close()


def online_store(world) -> EpisodeStore | None:
    path = world["out"] / "online_replay.zarr"
    return EpisodeStore(str(path), mode="r") if (path / "zarr.json").exists() else None


def journal(world) -> list[dict]:
    return [json.loads(line) for line in (world["out"] / "journal.jsonl").read_text().splitlines()]


@pytest.mark.ros
def test_trains_on_announced_episodes_rejects_bad_ones_and_queues_during_training(start_learner, world):
    root, actor = world["replay_root"], world["actor"]
    outside = h.make_store(world["tmp"] / "outside" / "a.zarr", h.point_episodes(1, seed=5, source="online", prefix="o"))
    other = EpisodeStore(str(root / "other_schema.zarr"), mode="a",
                         spec=StoreSpec(obs=h.point_spec().obs, action_dim=3, control_rate_hz=10.0))
    steps, meta = actor.read_episode("ep0")
    other.append_episode({**steps, "action": steps["action"][:, [0, 1, 1]]},
                         {"id": "x0", **{k: meta[k] for k in ("source", "success", "terminated")}})

    u = 150  # a round takes seconds: long enough to announce during it
    _, peer = start_learner(updates_per_round=u)
    log = peer.node_log
    peer.wait_for(lambda: peer.checkpoint_at(INIT) is not None, 45.0, "the initial checkpoint announcement", log)
    h.assert_checkpoint_valid(peer.checkpoint_at(INIT), INIT, stage="offline_rl")
    peer.wait_subscriber()

    # Bad announcements: each rejected with its reason, nothing ingested.
    peer.announce_episode(outside, "o0")  # outside the replay root
    peer.announce("ep0", f"{root}/../outside/a.zarr", 10)  # ".." escape
    peer.announce("no_such_episode", actor.uri, 10)  # unknown id
    peer.announce("ep1", actor.uri, int(actor.episode_metadata("ep1")["length"]) + 1)  # wrong num_steps
    peer.announce_episode(other, "x0")  # wrong schema (action dim 3)
    peer.wait_for(lambda: peer.diag_int("rejected") == 5, 20.0, "5 rejections", log)
    diag = peer.diag()
    assert (diag["rejected_location"], diag["rejected_episode"], diag["rejected_length"], diag["rejected_schema"]) == (
        "2", "1", "1", "1"), diag
    assert diag["ingested"] == "0" and diag["state"] == "waiting"
    assert online_store(world).num_episodes == 0
    text = log()
    assert "outside the replay root" in text and "no committed episode 'no_such_episode'" in text
    assert "steps, announced" in text
    assert "action dim 3, expected 2" in text

    # Two good episodes -> a round of u updates; two more announced while it trains are
    # ingested at once and trained on in the next round.
    peer.announce_episode(actor, "ep0")
    peer.announce_episode(actor, "ep1")
    peer.wait_for(lambda: peer.diag().get("state") == "training", 20.0, "the first round to start", log)
    peer.announce_episode(actor, "ep2")
    peer.announce_episode(actor, "ep3")
    peer.wait_for(lambda: peer.diag_int("ingested") == 4, 20.0, "ep2, ep3 ingested", log)
    peer.wait_for(lambda: peer.checkpoint_at(INIT + 2 * u) is not None, 60.0, "the second round's checkpoint", log)
    first = h.assert_checkpoint_valid(peer.checkpoint_at(INIT + u), INIT + u)
    second = h.assert_checkpoint_valid(peer.checkpoint_at(INIT + 2 * u), INIT + 2 * u)
    assert peer.checkpoint_at(INIT + u).uri != peer.checkpoint_at(INIT + 2 * u).uri  # new versioned directory
    assert any((a != b).any() for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    store = online_store(world)
    assert sorted(store.episode_ids()) == ["ep0", "ep1", "ep2", "ep3"]
    records = journal(world)
    rejected = [r["reason"] for r in records if r["op"] == "rejected"]
    assert sorted(rejected) == ["episode", "length", "schema"]  # location: refused before the journal
    seq = {r["announcement"]["episode_id"]: r["seq"] for r in records if r["op"] == "accepted"}
    accepted_at = {r["seq"]: r["unix"] for r in records if r["op"] == "accepted"}
    done = {r["seq"]: r for r in records if r["op"] == "done"}
    assert sorted(done) == sorted(seq[e] for e in ("ep0", "ep1", "ep2", "ep3"))
    assert {done[seq[e]]["step"] for e in ("ep0", "ep1")} == {INIT + u}
    assert {done[seq[e]]["step"] for e in ("ep2", "ep3")} == {INIT + 2 * u}
    # ep2 and ep3 were accepted while the first round was training: queued, not dropped.
    assert max(accepted_at[seq["ep2"]], accepted_at[seq["ep3"]]) < done[seq["ep0"]]["unix"]
    assert peer.diag()["rounds"] == "2" and peer.diag()["step"] == str(INIT + 2 * u)
    metrics = [json.loads(line) for line in (world["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [INIT + u, INIT + 2 * u]
    assert {"critic/loss", "actor/q", "time/updates_per_s", "online/return"} <= set(metrics[-1])
    assert "upd/s" in log()


@pytest.mark.ros
def test_killed_mid_training_resumes_from_its_last_checkpoint(start_learner, world):
    u = 100
    proc, peer = start_learner(updates_per_round=u)
    log = peer.node_log
    peer.wait_for(lambda: peer.checkpoint_at(INIT) is not None, 45.0, "the initial checkpoint", log)
    peer.wait_subscriber()
    actor = world["actor"]
    peer.announce_episode(actor, "ep0")
    peer.announce_episode(actor, "ep1")
    peer.wait_for(lambda: peer.checkpoint_at(INIT + u) is not None, 40.0, "the first round's checkpoint", log)

    peer.announce_episode(actor, "ep2")
    peer.announce_episode(actor, "ep3")
    def second_round_under_way() -> bool:
        d = peer.diag()
        return (d.get("state"), d.get("rounds"), d.get("ingested")) == ("training", "1", "4") and int(
            d["updates_in_round"]) >= 5

    peer.wait_for(second_round_under_way, 30.0, "the second round to be under way", log)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    latest = json.loads((world["out"] / "checkpoints" / "latest.json").read_text())["checkpoint"]
    assert latest == f"step-{INIT + u:010d}", "killed after the second round finished; make it longer"
    assert sorted(online_store(world).episode_ids()) == ["ep0", "ep1", "ep2", "ep3"]  # ingested, not trained

    # Restart on the same output dir: resumes at step INIT+u (announced), re-processes the two
    # pending journal entries (already in the online store: not copied twice) and trains on them.
    before = len(peer.checkpoints.all())
    _, peer = start_learner(updates_per_round=u)
    log = peer.node_log
    peer.wait_for(lambda: peer.checkpoint_at(INIT + 2 * u) is not None, 50.0, "a checkpoint after the restart", log)
    # (The resumed checkpoint is announced at start-up, and again when a subscriber is
    # matched: which of the two reaches us depends on discovery timing.)
    after = [int(m.step) for m in peer.checkpoints.all()[before:]]
    assert min(after) >= INIT + u, after  # the step continues, no reset
    h.assert_checkpoint_valid(peer.checkpoint_at(INIT + 2 * u), INIT + 2 * u)
    assert sorted(online_store(world).episode_ids()) == ["ep0", "ep1", "ep2", "ep3"]
    text = log()
    assert f"(step {INIT + u}, 1 rounds, 2 announcements trained on)" in text
    assert "re-processing 2 journal entries" in text
    metrics = [json.loads(line) for line in (world["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [INIT + u, INIT + 2 * u]
    records = journal(world)
    done_steps = {r["seq"]: r.get("step") for r in records if r["op"] == "done"}
    assert done_steps == {0: INIT + u, 1: INIT + u, 2: INIT + 2 * u, 3: INIT + 2 * u}
    assert peer.diag()["rounds"] == "2"


@pytest.mark.ros
def test_offline_stages_run_on_start_before_online_rl(start_learner, world):
    run_config = world["tmp"] / "run_offline.yaml"
    run_config.write_text(yaml.safe_dump({**h.RUN_CONFIG, "critic_warmup": {"steps": 2, "batch_size": 8},
                                          "offline_rl": {"steps": 3, "batch_size": 8}}))
    _, peer = start_learner(run_config=str(run_config), run_offline_stages_on_start=True, updates_per_round=5)
    log = peer.node_log
    # Critic warm-up (2) + offline RL (3) from the initial checkpoint: the trainer counts 5 updates.
    peer.wait_for(lambda: peer.checkpoint_at(5) is not None, 45.0, "the offline stages' policy", log)
    msg = peer.checkpoint_at(5)
    assert msg.uri == str(world["out"] / "offline" / "policy_offline_rl")
    h.assert_checkpoint_valid(msg, 5, stage="offline_rl")
    peer.wait_subscriber()
    peer.announce_episode(world["actor"], "ep0")
    peer.announce_episode(world["actor"], "ep1")
    peer.wait_for(lambda: peer.checkpoint_at(10) is not None, 30.0, "online RL on top of them", log)
    assert "offline stages done" in log()


@pytest.mark.ros
def test_an_initial_checkpoint_without_critic_fails_with_a_clear_error(world, ros_env):
    path = h.write_params(world["tmp"] / "p.yaml", h.node_params(
        world["out"], world["no_critic"], world["offline"], world["replay_root"], world["run_config"]))
    result = subprocess.run([sys.executable, "-m", "sernf_learner.learner_node", "--ros-args", "--params-file",
                             str(path)], env=ros_env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "has no critic" in result.stdout + result.stderr


# ------------------------------------------------------------------------- without ROS


def test_config_validation_and_run_config_overrides(tmp_path):
    from sernf_learner.configs import RunConfig
    from sernf_learner.learner_node import LearnerNodeConfig

    cfg = LearnerNodeConfig(episodes_per_update=2, batch_size=8)
    run = RunConfig()
    online = cfg.online_config(run)
    assert (online.episodes_per_iteration, online.batch_size) == (2, 8)
    assert (online.updates_per_iteration, online.rho) == (run.online_rl.updates_per_iteration, run.online_rl.rho)
    assert LearnerNodeConfig(rho=0.0).online_config(run).rho == 0.0
    for bad, match in [
        (dict(rho=1.5), "rho"), (dict(batch_size=-1), "batch_size"), (dict(keep_checkpoints=0), "keep_checkpoints"),
        (dict(offline_stages=("offline_rl", "critic_warmup")), "ordered subset"),
        (dict(offline_stages=("online_rl",)), "ordered subset"),
        (dict(run_offline_stages_on_start=True), "needs run_config"),
        (dict(allowed_url_prefixes=("/local",)), "not a URL"),
    ]:
        with pytest.raises(ValueError, match=match):
            LearnerNodeConfig(**bad)


def test_offline_stages_on_start_run_the_trainer_from_the_initial_checkpoint(data, tmp_path):
    from sernf_learner.configs import RunConfig
    from sernf_learner.learner_node import LearnerNodeConfig, checkpoint_step, run_offline_stages
    from sernf_policy.policy import Policy

    run = RunConfig.from_dict({**h.RUN_CONFIG, "critic_warmup": {"steps": 2, "batch_size": 8},
                               "offline_rl": {"steps": 3, "batch_size": 8}})
    cfg = LearnerNodeConfig(initial_checkpoint=str(data["initial"]), offline_store_uri=str(data["offline"]),
                            run_config="run.yaml", run_offline_stages_on_start=True)
    result = run_offline_stages(cfg, run, tmp_path)
    assert result == tmp_path / "offline" / "policy_offline_rl"
    assert Policy.load(result).critic is not None
    step, stage = checkpoint_step(result)
    assert stage == "offline_rl" and step >= 5
    # A restart after the stages finished does not run them again.
    assert run_offline_stages(cfg, run, tmp_path) == result and checkpoint_step(result) == (step, stage)


@pytest.mark.ros
def test_signed_announcements_reconciliation_and_stale_temp_clean_up(start_learner, world):
    """With keys: checkpoint announcements carry a valid signature over the files' hashes and a
    run id; unsigned or wrongly signed replay announcements are refused. Episodes nobody
    announced are ingested from the watched store (reconciliation), each exactly once. A temp
    directory a killed learner left among its checkpoints is removed at start."""
    from sernf_policy.announcement_auth import (
        CHECKPOINT_KIND,
        REPLAY_KIND,
        AnnouncementKey,
        checkpoint_fields,
        generate_key_file,
        replay_fields,
    )
    from sernf_policy.checkpoint import CONFIG_FILE, file_sha256

    actor = world["actor"]
    ckpt_key = generate_key_file(world["tmp"] / "keys" / "checkpoint.key")
    replay_key = generate_key_file(world["tmp"] / "keys" / "replay.key")
    stale = world["out"] / "checkpoints" / ".step-0000000999.tmp-deadbeef"
    (stale / "policy").mkdir(parents=True)
    _, peer = start_learner(checkpoint_key_file=str(world["tmp"] / "keys" / "checkpoint.key"),
                            replay_key_file=str(world["tmp"] / "keys" / "replay.key"),
                            watch_stores=[actor.uri], reconcile_period_s=0.5, episodes_per_update=100)
    log = peer.node_log
    peer.wait_for(lambda: peer.checkpoint_at(INIT) is not None, 45.0, "the initial checkpoint announcement", log)
    msg = peer.checkpoint_at(INIT)
    assert msg.run_id and msg.key_id == ckpt_key.key_id
    assert msg.config_sha256 == file_sha256(Path(msg.uri) / CONFIG_FILE)
    fields = checkpoint_fields(uri=msg.uri, step=msg.step, stage=msg.stage, sha256=msg.sha256, run_id=msg.run_id,
                               config_sha256=msg.config_sha256)
    assert AnnouncementKey.load(world["tmp"] / "keys" / "checkpoint.key").verify(
        CHECKPOINT_KIND, fields, msg.key_id, msg.signature) == ""
    assert not stale.exists() and "start-up clean-up: removed" in log()
    # Nothing was announced: reconciliation finds all six committed episodes of the watched store.
    peer.wait_for(lambda: peer.diag_int("ingested") == 6, 60.0, "reconciliation to ingest ep0..ep5", log)
    assert peer.diag_int("reconciled") == 6
    # Announcements now: unsigned and foreign-signed are refused; a valid one is a repeat.
    peer.wait_subscriber()
    peer.announce_episode(actor, "ep0")
    foreign = generate_key_file(world["tmp"] / "keys" / "foreign.key")

    def signed(key: Any, episode_id: str) -> None:
        from sernf_interfaces.msg import ReplayEpisode

        m = ReplayEpisode()
        m.episode_id, m.uri, m.source = episode_id, actor.uri, "online"
        m.num_steps = int(actor.episode_metadata(episode_id)["length"])
        m.key_id = key.key_id
        m.signature = key.sign(REPLAY_KIND, replay_fields(
            episode_id=m.episode_id, uri=m.uri, num_steps=m.num_steps, episode_return=m.episode_return,
            source=m.source, subtask_names=[], subtask_success=[]))
        peer.replay_pub.publish(m)

    signed(foreign, "ep1")
    peer.wait_for(lambda: peer.diag_int("rejected_signature") == 2, 20.0, "2 signature rejections", log)
    signed(replay_key, "ep2")
    peer.wait_for(lambda: peer.diag_int("repeats") >= 1, 20.0, "the signed repeat", log)
    store = online_store(world)
    assert sorted(store.episode_ids()) == [f"ep{i}" for i in range(6)]  # each exactly once
    assert peer.diag_int("ingested") == 6 and "unsigned announcement" in log()
