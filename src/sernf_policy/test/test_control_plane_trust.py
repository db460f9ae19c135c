"""Pure checks of the control plane's trust rules: announcement signatures and key files,
checkpoint roots and step order, stale temp clean-up, observation bounds, reward specs."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from sernf_data.spec import ObsKeySpec
from sernf_policy.announcement_auth import (
    CHECKPOINT_KIND,
    REPLAY_KIND,
    AnnouncementKey,
    canonical_bytes,
    checkpoint_fields,
    checkpoint_order_problem,
    generate_key_file,
    main,
    replay_fields,
)
from sernf_policy.episode_recorder import (
    EpisodeRecorder,
    EpisodeRecorderConfig,
    RewardEvent,
    RewardSpec,
)
from sernf_policy.observation_buffer import KeyBounds, ObservationBuffer, ObservationBufferConfig

# ------------------------------------------------------------------------------ signatures


def _fields(**changes):
    fields = dict(uri="/ckpt/step-10/policy", step=10, stage="online_rl", sha256="a" * 64, run_id="run-1",
                  config_sha256="b" * 64)
    fields.update(changes)
    return checkpoint_fields(**fields)


def test_key_file_is_private_and_signatures_verify(tmp_path):
    path = tmp_path / "keys" / "checkpoint.key"
    key = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = AnnouncementKey.load(path)
    assert loaded.key_id == key.key_id and len(key.key_id) == 16
    assert loaded.secret.hex() not in repr(loaded)
    signature = key.sign(CHECKPOINT_KIND, _fields())
    assert loaded.verify(CHECKPOINT_KIND, _fields(), key.key_id, signature) == ""
    with pytest.raises(FileExistsError):
        generate_key_file(path)  # never overwritten by accident


@pytest.mark.parametrize("change", [{"step": 11}, {"uri": "/elsewhere"}, {"sha256": "c" * 64},
                                    {"run_id": "run-2"}, {"config_sha256": "d" * 64}, {"stage": "il"}])
def test_any_changed_field_breaks_the_signature(tmp_path, change):
    key = generate_key_file(tmp_path / "k")
    signature = key.sign(CHECKPOINT_KIND, _fields())
    assert "wrong signature" in key.verify(CHECKPOINT_KIND, _fields(**change), key.key_id, signature)


def test_unsigned_other_key_and_cross_kind_are_refused(tmp_path):
    key, other = generate_key_file(tmp_path / "a"), generate_key_file(tmp_path / "b")
    assert "unsigned" in key.verify(CHECKPOINT_KIND, _fields(), "", "")
    forged = other.sign(CHECKPOINT_KIND, _fields())
    assert "expected key" in key.verify(CHECKPOINT_KIND, _fields(), other.key_id, forged)
    assert "wrong signature" in key.verify(CHECKPOINT_KIND, _fields(), key.key_id, forged)  # claims our id
    assert "not hex" in key.verify(CHECKPOINT_KIND, _fields(), key.key_id, "zz")
    # A signed replay announcement is no checkpoint announcement (domain separation).
    replay = replay_fields(episode_id="e1", uri="/r", num_steps=3, episode_return=1.0, source="online",
                           subtask_names=["grasp"], subtask_success=[True])
    signature = key.sign(REPLAY_KIND, replay)
    assert key.verify(REPLAY_KIND, replay, key.key_id, signature) == ""
    assert key.verify(CHECKPOINT_KIND, replay, key.key_id, signature) != ""
    # Floats are encoded bit-exactly: a return changed in the last bit is another message.
    nudged = dict(replay, episode_return=np.nextafter(1.0, 2.0))
    assert canonical_bytes(REPLAY_KIND, nudged) != canonical_bytes(REPLAY_KIND, replay)


def test_key_files_readable_by_others_or_malformed_are_refused(tmp_path, capsys):
    path = tmp_path / "k"
    generate_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        AnnouncementKey.load(path)
    bad = tmp_path / "bad"
    bad.write_text("not hex\n")
    os.chmod(bad, 0o600)
    with pytest.raises(ValueError, match="hex"):
        AnnouncementKey.load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        AnnouncementKey.load(tmp_path / "missing")
    # The CLI: generate, then print the id; refuses to overwrite.
    assert main(["generate", str(tmp_path / "cli.key")]) == 0
    assert main(["id", str(tmp_path / "cli.key")]) == 0
    assert AnnouncementKey.load(tmp_path / "cli.key").key_id in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "cli.key")]) == 1


# ---------------------------------------------------------------------------- step order


def test_checkpoint_steps_increase_within_a_run_and_never_go_back():
    cur = ("run-1", 100, "a" * 64)
    assert checkpoint_order_problem(None, "run-1", 0, "x") == ""
    assert checkpoint_order_problem(cur, "run-1", 101, "b" * 64) == ""
    assert "does not increase" in checkpoint_order_problem(cur, "run-1", 100, "b" * 64)
    assert "does not increase" in checkpoint_order_problem(cur, "run-1", 50, "b" * 64)
    # A restarted learner (new run) resumes at or above the running step.
    assert checkpoint_order_problem(cur, "run-2", 150, "b" * 64) == ""
    assert "goes back" in checkpoint_order_problem(cur, "run-2", 99, "b" * 64)
    assert "weights differ" in checkpoint_order_problem(cur, "run-2", 100, "b" * 64)
    # Announcements of a superseded run are refused, whatever their step.
    assert "superseded" in checkpoint_order_problem(("run-2", 150, "b" * 64), "run-1", 777008, "c" * 64,
                                                    retired_runs={"run-1"})
    # A checkpoint from the node's own configuration (run "") is replaced by any step >= its own.
    assert checkpoint_order_problem(("", 3, "a" * 64), "run-1", 3, "b" * 64) == ""
    assert "goes back" in checkpoint_order_problem(("", 3, "a" * 64), "run-1", 2, "b" * 64)


# ------------------------------------------------------------------- roots and temp files


def test_checkpoints_outside_the_roots_or_behind_symlinks_are_refused(tmp_path):
    from sernf_policy.checkpoint import CheckpointError, resolve_inside_roots

    root, outside = tmp_path / "learner", tmp_path / "elsewhere"
    for d in (root / "step-1", outside / "copy"):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"x")
    assert resolve_inside_roots(root / "step-1", [str(root)]) == (root / "step-1").resolve()
    with pytest.raises(CheckpointError, match="outside"):
        resolve_inside_roots(outside / "copy", [str(root)])
    with pytest.raises(CheckpointError, match="outside"):
        resolve_inside_roots(root / ".." / "elsewhere" / "copy", [str(root)])
    (root / "link").symlink_to(outside / "copy")
    with pytest.raises(CheckpointError, match="outside"):
        resolve_inside_roots(root / "link", [str(root)])
    # A checkpoint inside the root whose weights file points out of it.
    (root / "step-2").mkdir()
    (root / "step-2" / "config.json").write_text("{}")
    (root / "step-2" / "model.safetensors").symlink_to(outside / "copy" / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        resolve_inside_roots(root / "step-2", [str(root)])
    with pytest.raises(CheckpointError, match="no checkpoint roots"):
        resolve_inside_roots(root / "step-1", [])
    # A sibling whose name only starts like the root is not inside it.
    (tmp_path / "learner2" / "c").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="outside"):
        resolve_inside_roots(tmp_path / "learner2" / "c", [str(root)])


def test_stale_temps_are_removed_and_an_orphaned_old_checkpoint_is_restored(tmp_path):
    from sernf_policy.checkpoint import recover_stale_temps

    (tmp_path / "step-0000000010").mkdir()  # committed: untouched
    (tmp_path / "step-0000000010" / "learner.json").write_text("{}")
    (tmp_path / ".step-0000000020.tmp-1a2b3c4d" / "policy").mkdir(parents=True)  # killed mid-write
    (tmp_path / ".latest.json.tmp-5e6f7a8b").write_text("{")
    (tmp_path / "latest.json").write_text('{"checkpoint": "step-0000000010"}')
    (tmp_path / ".policy.old-abc").mkdir()  # the only copy of "policy": killed between the renames
    (tmp_path / ".policy.old-abc" / "config.json").write_text("{}")
    (tmp_path / "best").mkdir()
    (tmp_path / ".best.old-def").mkdir()  # superseded: "best" exists
    done = recover_stale_temps(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best", "latest.json", "policy", "step-0000000010"], (names, done)
    assert (tmp_path / "policy" / "config.json").is_file()
    assert (tmp_path / "step-0000000010" / "learner.json").is_file()
    assert len(done) == 4
    assert recover_stale_temps(tmp_path) == []


# --------------------------------------------------------------------------- observations


def _buffer(**bounds):
    spec = {"pose": ObsKeySpec((7,), "lowdim"), "joints": ObsKeySpec((2,), "lowdim", low=(-1.0, -1.0),
                                                                   high=(1.0, 1.0))}
    return ObservationBuffer(spec, ObservationBufferConfig(history=1, stale_after_s=0.2), bounds=bounds)


GOOD_POSE = np.array([0.1, 0.2, 0.3, 1.0, 0.0, 0.0, 0.0], np.float32)


@pytest.mark.parametrize("quat,ok", [((2, 2, 0, 0), False), ((0, 0, 0, 0), False), ((1.02, 0, 0, 0), True),
                                     ((0.5, 0.5, 0.5, 0.5), True)])
def test_quaternions_are_normalised_within_tolerance_else_refused(quat, ok):
    buf = _buffer(pose=KeyBounds(quaternion_at=3, quaternion_tolerance=0.05))
    pose = GOOD_POSE.copy()
    pose[3:] = quat
    reason = buf.update("pose", pose, received=0.0)
    assert (reason == "") == ok, reason
    if ok:
        assert abs(np.linalg.norm(buf.latest("pose")[3:]) - 1.0) < 1e-6
    else:
        assert "quaternion" in reason and buf.latest("pose") is None
        assert "invalid" in buf.problems(0.0)["pose"]


def test_bounds_from_the_spec_and_the_deployment_refuse_absurd_values_and_recover():
    buf = _buffer(pose=KeyBounds(low=[-1, -1, 0] + [-2] * 4, high=[1, 1, 1.5] + [2] * 4, what="workspace"))
    assert "above its upper bound" in buf.update("joints", np.array([1e6, 0.0]), received=0.0)
    assert "below its lower bound" in buf.update("joints", np.array([0.0, -1.5]), received=0.0)
    far = GOOD_POSE.copy()
    far[0] = 1e30
    reason = buf.update("pose", far, received=0.0)
    assert "out of bounds" in reason and "workspace" in reason
    assert set(buf.problems(0.0)) == {"pose", "joints"}
    # Inputs return: usable again.
    assert buf.update("joints", np.array([0.5, -0.5]), received=0.0) == ""
    assert buf.update("pose", GOOD_POSE, received=0.0) == ""
    assert buf.problems(0.1) == {}


def test_old_header_stamps_are_stale_even_when_just_received():
    buf = _buffer()
    buf.update("pose", GOOD_POSE, received=10.0, stamp=1000.0 - 3600.0)  # an hour old
    buf.update("joints", np.zeros(2), received=10.0, stamp=1000.0)
    problems = buf.problems(10.05, clock_now=1000.05)
    assert list(problems) == ["pose"] and "header stamp" in problems["pose"]
    assert buf.sample(10.05, clock_now=1000.05) and buf.history_length() == 0
    buf.update("pose", GOOD_POSE, received=10.1, stamp=1000.1)
    assert buf.sample(10.15, clock_now=1000.15) == {}
    # Without the node clock (stamps unchecked) only the arrival time counts.
    buf.update("pose", GOOD_POSE, received=10.2, stamp=0.0)
    buf.update("joints", np.zeros(2), received=10.2, stamp=1000.2)
    assert buf.problems(10.25) == {}
    assert "header stamp" in buf.problems(10.25, clock_now=1000.25)["pose"]


def test_spec_bounds_are_not_part_of_the_schema():
    plain = ObsKeySpec((7,), "lowdim")
    bounded = ObsKeySpec((7,), "lowdim", low=(-1,) * 7, high=(1,) * 7, quaternion_at=3)
    assert plain == bounded and plain.to_dict() == {"shape": [7], "kind": "lowdim"}
    assert ObsKeySpec.from_dict(bounded.to_dict()).quaternion_at == 3
    with pytest.raises(ValueError, match="low"):
        ObsKeySpec((2,), "lowdim", low=(1.0, 1.0), high=(0.0, 0.0))
    with pytest.raises(ValueError, match="quaternion_at"):
        ObsKeySpec((5,), "lowdim", quaternion_at=3)
    with pytest.raises(ValueError, match="lowdim"):
        ObsKeySpec((4, 4, 3), "rgb", low=(0.0,))


# ------------------------------------------------------------------------------- rewards


def test_reward_spec_refuses_foreign_values_subtasks_and_repeats():
    spec = RewardSpec(subtasks=("grasp", "cut"), value_min=0.0, value_max=1.0, once_per_subtask=True)
    rec = EpisodeRecorder(EpisodeRecorderConfig(control_period_s=0.1, subtasks=("grasp", "cut"), reward_spec=spec),
                          episode_id="e", start_time=0.0, obs_keys=["x"], action_dim=1)
    for i in range(5):
        rec.add_step(i * 0.1, {"x": np.zeros(1, np.float32)}, np.zeros(1, np.float32))
    assert "outside" in rec.add_reward(RewardEvent(0.15, 1000.0, "grasp"))
    assert "not one of" in rec.add_reward(RewardEvent(0.15, 1.0, "stab"))
    assert "not one of" in rec.add_reward(RewardEvent(0.15, 1.0, ""))
    assert rec.add_reward(RewardEvent(0.15, 1.0, "grasp")) == ""
    assert "already rewarded" in rec.add_reward(RewardEvent(0.25, 1.0, "grasp"))
    assert rec.add_reward(RewardEvent(0.35, 1.0, "cut")) == ""
    rec.close(0.5)
    assert "after the episode ended" in rec.add_reward(RewardEvent(9.0, 1.0, "cut"))
    steps, meta = rec.finish()
    assert float(steps["reward"].sum()) == 2.0 and meta["success"]
