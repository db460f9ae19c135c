"""The control-plane fault campaign over real DDS (bench/fault_campaign.py prints its table;
tests/test_fault_campaign.py runs a short version).

Two scenes, each in its own ROS domain:

* **learner kills** (the sim graph: sim robot + policy + learner, config/sim.yaml with test
  budgets): episodes flow while the learner is SIGKILLed at random moments (idle, ingesting,
  training, writing a checkpoint) and restarted. After the last restart the simulator stops,
  and the campaign compares the policy's replay store, the episodes announced on
  /sernf/replay and the learner's online store (what it ingested): none may be missing;
  every checkpoint left on disk must load; no temp directory may be left.
* **policy trust** (a policy node and a test peer publishing its inputs): bad observations
  (non-unit and zero quaternions, an hour-old header stamp, joints at 1e6 rad, an EE at
  1e30 m) must stop the commands within 200 ms + one control tick with the reason on
  /diagnostics, and commanding must resume when inputs are good again; foreign checkpoints
  (outside the roots, behind a symlink, unsigned, wrongly signed, step going back) must be
  refused while the old policy keeps commanding; rewards from a node not allowed, of a value
  or subtask the task cannot earn, or repeated, and an END from a node that is not the
  episode authority must be refused and leave the recorded episode as it was.

Every trial gives a :class:`Trial` (kind, passed, detail); :func:`table` formats them.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ros_domains import free_domain_id

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Trial:
    kind: str
    passed: bool
    detail: str = ""


def table(trials: list[Trial]) -> str:
    """Trial kind | trials | passed | failed, in first-seen order, plus a total line."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in trials:
        counts[t.kind][0 if t.passed else 1] += 1
    rows = [(k, p + f, p, f) for k, (p, f) in counts.items()]
    rows.append(("total", len(trials), sum(r[2] for r in rows), sum(r[3] for r in rows)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'trial kind':<{width}}  trials  passed  failed", "-" * (width + 24)]
    lines += [f"{k:<{width}}  {n:>6}  {p:>6}  {f:>6}" for k, n, p, f in rows]
    return "\n".join(lines)


def isolated_env() -> dict[str, str]:
    """This process's environment with its own DDS domain and localhost discovery."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(free_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
    return env


# ================================================================================ learner kills


def learner_kill_campaign(tmp: Path, kills: int, seed: int = 0, say: Callable[[str], None] = print) -> list[Trial]:
    """``kills`` SIGKILLs of the learner while the sim graph runs; see the module docstring."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sernf.graph import sim_graph
    from sernf.run_graph import GraphProcesses
    from test_sim_loop import Observer, _graph_config, _offline_store_and_policy

    from sernf_data.store import EpisodeStore
    from sernf_policy.policy import Policy

    tmp.mkdir(parents=True, exist_ok=True)
    demos, initial = _offline_store_and_policy(tmp)
    config_dir = _graph_config(tmp, demos, initial)
    _edit_learner_params(config_dir, reconcile_period_s=1.0)
    (tmp / "logs").mkdir(exist_ok=True)
    observer = Observer()
    learner_diag: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id == "sernf_learner":
                learner_diag.clear()
                learner_diag.update({kv.key: kv.value for kv in status.values})

    observer.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    graph = GraphProcesses(sim_graph(), config_dir, env=os.environ.copy(), log_dir=tmp / "logs")
    rng = random.Random(seed)
    trials: list[Trial] = []
    ckpt_dir = tmp / "learner" / "checkpoints"
    replay_uri, online_uri = tmp / "replay" / "online.zarr", tmp / "learner" / "online_replay.zarr"

    def spin_for(seconds: float, allow: tuple[str, ...] = ("learner",)) -> None:
        observer.spin_until(lambda: False, seconds, graph, tmp, allow_exited=allow)

    def learner_ready(previous_run: str, timeout: float) -> bool:
        return observer.spin_until(
            lambda: learner_diag.get("run_id", previous_run) != previous_run
            and learner_diag.get("state") in ("waiting", "training"), timeout, graph, tmp, allow_exited=("learner",))

    try:
        graph.start()
        if not observer.spin_until(lambda: 0 in observer.policy_steps, 180, graph, tmp):
            raise RuntimeError("the policy never got its first checkpoint")
        observer.reset.wait_for_service(timeout_sec=30)
        observer.reset.call_async(__import__("std_srvs.srv", fromlist=["Trigger"]).Trigger.Request())
        run = ""
        for i in range(kills):
            if not learner_ready(run, 180):
                trials.append(Trial("learner kill", False, f"kill {i}: the learner did not come up"))
                break
            run = learner_diag["run_id"]
            spin_for(rng.uniform(0.5, 6.0))
            state = learner_diag.get("state", "?")
            graph.kill("learner")
            tmp_left = sorted(p.name for p in ckpt_dir.glob(".*tmp*")) if ckpt_dir.exists() else []
            spin_for(rng.uniform(0.5, 3.0))  # episodes keep coming while it is down
            graph.start_node("learner")
            came_back = learner_ready(run, 180)
            where = f"{state}{', mid-checkpoint-write' if tmp_left else ''}"
            trials.append(Trial("learner kill", came_back, f"kill {i} while {where}"))
            say(f"  kill {i + 1}/{kills}: learner was {where}; back: {came_back}; "
                f"episodes announced {len(observer.replays)}")
        # Final restart is done; stop the simulator so the episode set is final.
        if not learner_ready(run, 180):
            trials.append(Trial("final restart", False, "the learner did not come up after the last kill"))
        graph.kill("sim_robot", sig=2)
        spin_for(3.0, allow=("sim_robot",))  # the last episode: ABORT, reward grace, commit, announcement
        policy_ids = set(EpisodeStore(str(replay_uri), mode="r").episode_ids())

        def learner_has_all() -> bool:
            try:
                return policy_ids <= set(EpisodeStore(str(online_uri), mode="r").episode_ids())
            except (FileNotFoundError, OSError, ValueError, RuntimeError):
                return False

        observer.spin_until(learner_has_all, 120, graph, tmp, allow_exited=("sim_robot",))
        announced = {m.episode_id for m in observer.replays}
        ingested = set(EpisodeStore(str(online_uri), mode="r").episode_ids())
        missing = policy_ids - ingested
        trials.append(Trial("no episode missing", not missing and announced <= policy_ids,
                            f"policy store {len(policy_ids)}, announced {len(announced)}, learner ingested "
                            f"{len(ingested)}, missing {sorted(missing)[:5]}, announced-not-stored "
                            f"{sorted(announced - policy_ids)[:5]}"))
        via_reconcile = _reconciled_ids(tmp / "learner" / "journal.jsonl")
        say(f"  episodes: policy store {len(policy_ids)}, announced {len(announced)}, learner ingested "
            f"{len(ingested)}, missing {len(missing)}; {len(via_reconcile & ingested)} of them reached the "
            "learner only through reconciliation (committed while it was down or starting)")
    finally:
        graph.stop()  # SIGTERM: orderly (a round in progress is abandoned, no half checkpoint kept)
        observer.close()
    unloadable = []
    checkpoints = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir()) if ckpt_dir.exists() else []
    for ckpt in checkpoints:
        try:
            Policy.load(ckpt / "policy")
        except Exception as exc:  # noqa: BLE001 - any failure to load is what is counted
            unloadable.append(f"{ckpt.name}: {exc}")
    trials.append(Trial("checkpoints loadable", bool(checkpoints) and not unloadable,
                        f"{len(checkpoints)} on disk, unloadable: {unloadable[:3]}"))
    leftovers = sorted(str(p.relative_to(tmp)) for p in ckpt_dir.glob(".*tmp*")) if ckpt_dir.exists() else []
    leftovers += sorted(str(p.relative_to(tmp)) for pattern in ("*.tmp", "*.partial")
                        for p in online_uri.rglob(pattern))
    trials.append(Trial("no temp dirs left", not leftovers, f"left: {leftovers[:5]}"))
    return trials


def _reconciled_ids(journal: Path) -> set[str]:
    """Episode ids the learner's journal says it queued from reconciliation, never from an announcement."""
    import json

    via: dict[str, set[str]] = defaultdict(set)
    for line in journal.read_text().splitlines() if journal.exists() else []:
        record = json.loads(line)
        if record.get("op") == "accepted":
            via[record["announcement"]["episode_id"]].add(record.get("via", "announcement"))
    return {episode for episode, ways in via.items() if ways == {"reconcile"}}


def _edit_learner_params(config_dir: Path, **params: Any) -> None:
    import yaml

    path = config_dir / "sim.yaml"
    data = yaml.safe_load(path.read_text())
    data["learner"]["ros__parameters"].update(params)
    path.write_text(yaml.safe_dump(data))


# ================================================================================ policy trust

BAD_OBSERVATIONS = {
    "quaternion (2, 2, 0, 0)": ("quat_2200", "quaternion"),
    "quaternion all zero": ("quat_zero", "quaternion"),
    "header stamp 1 h old": ("stamp_old", "header stamp"),
    "joints at 1e6 rad": ("joints_1e6", "out of bounds"),
    "EE position 1e30 m": ("pos_1e30", "out of bounds"),
}


def _harness_class() -> type:
    import policy_node_harness as h
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState

    class CampaignHarness(h.Harness):
        """The policy test peer, publishing bad observations on demand."""

        def __init__(self) -> None:
            self.first_bad_at: float | None = None
            super().__init__()

        def _publish_observations(self) -> None:
            mode = self.mode
            if mode in ("good", "off", "nan_pose", "short_joints"):
                return super()._publish_observations()
            now = self.node.get_clock().now()
            stamp = (now - __import__("rclpy.duration", fromlist=["Duration"]).Duration(seconds=3600)).to_msg() \
                if mode == "stamp_old" else now.to_msg()
            pose = PoseStamped()
            pose.header.stamp = stamp
            pose.pose.position.x = 1e30 if mode == "pos_1e30" else 0.4
            q = {"quat_2200": (2.0, 2.0, 0.0, 0.0), "quat_zero": (0.0, 0.0, 0.0, 0.0)}.get(mode, (1.0, 0.0, 0.0, 0.0))
            pose.pose.orientation.w, pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z = q
            joints = JointState()
            joints.header.stamp = stamp
            joints.name = list(reversed(h.HAND_JOINTS))
            joints.position = [1e6, 0.2] if mode == "joints_1e6" else [0.3, 0.2]
            self.pose_pub.publish(pose)
            self.joint_pub.publish(joints)
            if self.first_bad_at is None:
                self.first_bad_at = time.monotonic()
            self.last_obs_time = time.monotonic()

    return CampaignHarness


def policy_trust_campaign(tmp: Path, repeats: int = 1, strict_latency: bool = True,
                          say: Callable[[str], None] = print) -> list[Trial]:
    """Bad observations, foreign checkpoints, injected rewards and a foreign END against one
    policy node; ``repeats`` rounds of the bad observations."""
    import policy_node_harness as h
    from rclpy.node import Node

    from sernf_data.store import EpisodeStore
    from sernf_interfaces.msg import EpisodeEvent, RewardEvent
    from sernf_policy.announcement_auth import generate_key_file

    tmp.mkdir(parents=True, exist_ok=True)
    roots = tmp / "learner" / "checkpoints"
    shas = {}
    for name, seed, step in (("step-3", 0, 3), ("step-7", 1, 7), ("step-9", 2, 9)):
        shas[name] = h.tiny_policy(seed).save(roots / name / "policy", metadata={"step": step})
    key = generate_key_file(tmp / "keys" / "checkpoint.key")
    foreign_key = generate_key_file(tmp / "keys" / "foreign.key")
    replay_uri = tmp / "replay.zarr"
    params = h.node_params(str(roots / "step-3" / "policy"), auto_start_episode=True, replay_uri=str(replay_uri),
                           subtasks=["grasp", "cut"], checkpoint_roots=[str(roots)],
                           checkpoint_key_file=str(tmp / "keys" / "checkpoint.key"),
                           reward_sources=["/labeler"], reward_source_kinds=["operator", "auto"],
                           episode_authorities=["/authority"], max_episode_steps=3000)
    path = h.write_params(tmp / "policy_params.yaml", params)
    log_path = tmp / "policy_node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sernf_policy.policy_node", "--ros-args", "--params-file",
                                 str(path)], env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT, start_new_session=True)
    harness = _harness_class()()
    labeler = Node("labeler", context=harness.context)
    authority = Node("authority", context=harness.context)
    for node in (labeler, authority):
        harness.executor.add_node(node)
    label_pub = labeler.create_publisher(RewardEvent, "/sernf/reward", 10)
    peer_episode_pub = harness.node.create_publisher(EpisodeEvent, "/sernf/episode", 10)
    authority_pub = authority.create_publisher(EpisodeEvent, "/sernf/episode", 10)
    node_log = log_path.read_text
    trials: list[Trial] = []
    tick = 1.0 / h.RATE_HZ

    def diag() -> dict[str, str]:
        return harness.diag()

    def diag_int(name: str) -> int:
        return int(diag().get(name, "-1"))

    def commanding(since: float, n: int = 5, timeout: float = 20.0) -> bool:
        try:
            harness.wait_for(lambda: len(harness.arm.times(since)) >= n, timeout, "commands")
            return True
        except AssertionError:
            return False

    try:
        harness.wait_for(lambda: len(harness.arm) > 0, 90.0, "the first commands", node_log)
        # ---------------------------------------------------------------- checkpoints
        harness.announce_checkpoint(str(roots / "step-7" / "policy"), 7, shas["step-7"], run_id="run-A",
                                    key=key)
        harness.wait_for(lambda: diag().get("checkpoint_step") == "7", 30.0, "the signed step 7", node_log)
        elsewhere = tmp / "elsewhere" / "policy"
        shutil.copytree(roots / "step-9" / "policy", elsewhere)
        (roots / "link").symlink_to(tmp / "elsewhere")
        foreign = [
            ("outside the roots", dict(uri=str(elsewhere), step=777008, sha256=shas["step-9"], run_id="run-A",
                                       key=key), "outside"),
            ("symlink out of the roots", dict(uri=str(roots / "link" / "policy"), step=777009,
                                              sha256=shas["step-9"], run_id="run-A", key=key), "outside"),
            ("unsigned", dict(uri=str(roots / "step-9" / "policy"), step=9, sha256=shas["step-9"],
                              run_id="run-A"), "unsigned"),
            ("wrong signature", dict(uri=str(roots / "step-9" / "policy"), step=9, sha256=shas["step-9"],
                                     run_id="run-A", key=foreign_key), "expected key"),
            ("forged signature", dict(uri=str(roots / "step-9" / "policy"), step=9, sha256=shas["step-9"],
                                      run_id="run-A", key=key, signature="ab" * 32), "wrong signature"),
            ("step going back", dict(uri=str(roots / "step-3" / "policy"), step=3, sha256=shas["step-3"],
                                     run_id="run-A", key=key), "does not increase"),
        ]
        for what, kwargs, expect in foreign:
            before = diag_int("checkpoints_rejected")
            harness.announce_checkpoint(**kwargs)
            try:
                harness.wait_for(lambda b=before: diag_int("checkpoints_rejected") > b, 30.0, f"rejection: {what}")
                d = diag()
                t0 = time.monotonic()
                ok = (expect in d.get("last_checkpoint_error", "") and d.get("checkpoint_step") == "7"
                      and commanding(t0))
                detail = d.get("last_checkpoint_error", "")[:160]
            except AssertionError as exc:
                ok, detail = False, str(exc)
            trials.append(Trial("foreign checkpoint", ok, f"{what}: {detail}"))
            say(f"  foreign checkpoint ({what}): {'refused' if ok else 'NOT REFUSED'}: {detail[:100]}")
        # ------------------------------------------------------------- bad observations
        for _r in range(repeats):
            for what, (mode, reason) in BAD_OBSERVATIONS.items():
                trials.append(_bad_observation_trial(harness, what, mode, reason, tick, strict_latency, say))
        # ------------------------------------------------ rewards and episode events
        trials += _reward_and_end_trials(harness, label_pub, peer_episode_pub, authority_pub, replay_uri,
                                         EpisodeStore, RewardEvent, EpisodeEvent, say)
    finally:
        harness.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    return trials


def _bad_observation_trial(harness: Any, what: str, mode: str, reason: str, tick: float, strict: bool,
                           say: Callable[[str], None]) -> Trial:
    harness.mode = "good"
    t_good = time.monotonic()
    try:
        harness.wait_for(lambda: len(harness.arm.times(t_good)) >= 5, 30.0, "commanding before the fault")
    except AssertionError:
        return Trial("bad observation", False, f"{what}: not commanding before the fault")
    harness.first_bad_at = None
    harness.mode = mode
    try:
        harness.wait_for(lambda: reason in harness.diag().get("hold_reason", ""), 10.0, f"hold for {what}")
    except AssertionError:
        harness.mode = "good"
        return Trial("bad observation", False, f"{what}: no hold with reason {reason!r} "
                     f"(hold_reason {harness.diag().get('hold_reason', '')!r})")
    time.sleep(1.0)  # commands after the hold would show here
    first_bad = harness.first_bad_at or time.monotonic()
    after = harness.arm.times(first_bad)
    latency = float(after[-1] - first_bad) if len(after) else 0.0
    hold_reason = harness.diag().get("hold_reason", "")
    harness.mode = "good"
    t_rec = time.monotonic()
    recovered = False
    try:
        harness.wait_for(lambda: len(harness.arm.times(t_rec)) >= 5, 30.0, "recovery")
        recovered = True
    except AssertionError:
        pass
    limit = 0.2 + tick if strict else 1.0
    ok = latency <= limit and recovered
    detail = (f"{what}: last command {latency * 1e3:.0f} ms after the first bad message (limit "
              f"{limit * 1e3:.0f} ms), reason {hold_reason[:90]!r}, recovered {recovered}")
    say(f"  bad observation: {detail}")
    return Trial("bad observation", ok, detail)


def _reward_and_end_trials(harness: Any, label_pub: Any, peer_episode_pub: Any, authority_pub: Any,
                           replay_uri: Path, EpisodeStore: Any, RewardEvent: Any, EpisodeEvent: Any,
                           say: Callable[[str], None]) -> list[Trial]:
    trials: list[Trial] = []
    harness.mode = "good"
    t0 = time.monotonic()
    harness.wait_for(lambda: len(harness.arm.times(t0)) >= 10, 30.0, "an episode commanding")
    episode_id = harness.diag().get("episode_id", "")
    committed_before = len(harness.replay)

    def reward(pub: Any, value: float, subtask: str, source: int = RewardEvent.SOURCE_OPERATOR) -> None:
        msg = RewardEvent()
        msg.header.stamp = harness.node.get_clock().now().to_msg()
        msg.value, msg.subtask, msg.source = float(value), subtask, source
        pub.publish(msg)

    injected = [
        ("reward from a node not allowed", lambda: reward(harness.reward_pub, 1.0, "grasp"), "reward_sources"),
        ("reward value 1000", lambda: reward(label_pub, 1000.0, "grasp"), "outside"),
        ("reward for an unknown subtask", lambda: reward(label_pub, 1.0, "stab"), "not one of"),
        ("reward of a source kind not allowed", lambda: reward(label_pub, 1.0, "grasp", RewardEvent.SOURCE_SIM),
         "reward_source_kinds"),
    ]
    for what, send, expect in injected:
        before = int(harness.diag().get("rewards_rejected", "0"))
        send()
        try:
            harness.wait_for(lambda b=before: int(harness.diag().get("rewards_rejected", "0")) > b, 10.0, what)
            ok = expect in harness.diag().get("last_reward_rejection", "")
        except AssertionError:
            ok = False
        trials.append(Trial("injected reward", ok, f"{what}: {harness.diag().get('last_reward_rejection', '')[:120]}"))
        say(f"  injected reward ({what}): {'refused' if ok else 'NOT REFUSED'}")
    # The one reward the task can earn here, then the same subtask again (at most once).
    reward(label_pub, 1.0, "grasp")
    time.sleep(0.5)
    before = int(harness.diag().get("rewards_rejected", "0"))
    reward(label_pub, 1.0, "grasp")
    try:
        harness.wait_for(lambda: int(harness.diag().get("rewards_rejected", "0")) > before, 10.0, "repeat refused")
        ok = "already rewarded" in harness.diag().get("last_reward_rejection", "")
    except AssertionError:
        ok = False
    trials.append(Trial("injected reward", ok, "second grasp reward in one episode"))
    # A spoofed END from the test peer (not the episode authority).
    end = EpisodeEvent()
    end.header.stamp = harness.node.get_clock().now().to_msg()
    end.episode_id, end.event, end.reason = episode_id, EpisodeEvent.END, "success"
    before = int(harness.diag().get("episode_events_rejected", "0"))
    peer_episode_pub.publish(end)
    t_end = time.monotonic()
    try:
        harness.wait_for(lambda: int(harness.diag().get("episode_events_rejected", "0")) > before, 10.0, "END refused")
        time.sleep(1.0)
        still = harness.diag().get("episode_id", "") == episode_id and len(harness.arm.times(t_end)) >= 5
    except AssertionError:
        still = False
    trials.append(Trial("foreign END", still, f"episode {episode_id} still running after a foreign END: {still}"))
    say(f"  foreign END: {'refused, episode continues' if still else 'NOT REFUSED'}")
    # The authority ends it; the recorded episode holds the one valid reward, nothing injected.
    end.header.stamp = harness.node.get_clock().now().to_msg()
    authority_pub.publish(end)
    try:
        harness.wait_for(lambda: any(m.episode_id == episode_id for _, m in harness.replay.since(0)), 20.0,
                         "the episode committed")
        steps, meta = EpisodeStore(str(replay_uri), mode="r").read_episode(episode_id)
        total = float(np.asarray(steps["reward"], np.float64).sum())
        ok = total == 1.0 and meta["subtask_success"] == {"grasp": True, "cut": False}
        detail = f"episode {episode_id}: return {total:g}, subtasks {meta['subtask_success']}, " \
                 f"{len(steps['reward'])} steps ({len(harness.replay) - committed_before} committed meanwhile)"
    except (AssertionError, KeyError, FileNotFoundError) as exc:
        ok, detail = False, str(exc)
    trials.append(Trial("recorded episode unchanged", ok, detail))
    say(f"  recorded episode: {detail}")
    return trials
