"""EpisodeStore: round trips (local + memory://), metadata, refresh, read-only mode, schema
validation and corrupt/foreign stores. Crash safety lives in test_replay_crash.py."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr

from sernf_data.spec import ObsKeySpec
from sernf_data.store import (
    COMMIT_RECORD_KEY,
    EpisodeStore,
    ReplayCorruptError,
    ReplaySchemaError,
    StoreSpec,
)

SPEC = StoreSpec(
    obs={"wrist_rgb": ObsKeySpec((6, 5, 3), "rgb"), "hand_joints": ObsKeySpec((4,), "lowdim")},
    action_dim=3,
    control_rate_hz=20.0,
)


def make_episode(length: int, marker: float = 0.0, spec: StoreSpec = SPEC) -> dict[str, np.ndarray]:
    """Deterministic episode whose every value encodes (marker, step) so mix-ups show."""
    steps = np.arange(length, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for name, ks in spec.obs.items():
        if ks.kind == "rgb":
            out[name] = ((np.arange(length)[:, None, None, None] + int(marker)) % 256 * np.ones((1, *ks.shape))).astype(np.uint8)
        else:
            out[name] = marker + steps[:, None] + np.arange(ks.shape[0], dtype=np.float32) / 10
    out["action"] = marker + steps[:, None] * np.ones((1, spec.action_dim), np.float32)
    out["reward"] = (steps == length - 1).astype(np.float32) * (1 + marker)
    out["timestamp"] = 1.7e9 + np.arange(length) / spec.control_rate_hz
    return out


def meta(**kw):
    base = {"source": "demo", "success": True, "terminated": True}
    base.update(kw)
    return base


@pytest.fixture(params=["local", "memory"])
def uri(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store.zarr")
    else:
        name = f"memory://replay-test-{uuid.uuid4().hex}"
        yield name
        fs, path = fsspec.core.url_to_fs(name)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def assert_steps_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == SPEC.step_arrays()[k][1], k
        np.testing.assert_array_equal(got[k], want[k].astype(got[k].dtype), err_msg=k)


def test_round_trip_ids_metadata_and_bulk_arrays(uri):
    writer = EpisodeStore(uri, mode="a", spec=SPEC)
    assert writer.num_episodes == 0
    episodes = [make_episode(n, marker=10 * i) for i, n in enumerate((5, 1, 9))]
    # float64 lowdim input is cast (sim code yields float64); images are never cast.
    episodes[2]["hand_joints"] = episodes[2]["hand_joints"].astype(np.float64)
    ids = [
        writer.append_episode(episodes[0], meta(id="demo-0007", operator="ana", extra={"bag": "x.mcap"})),
        writer.append_episode(episodes[1], meta(source="online", success=False, terminated=False)),
        writer.append_episode(
            episodes[2], {"source": "distill", "subtask_success": {"grasp": np.bool_(True), "place": False}, "terminated": True}
        ),
    ]
    assert ids[0] == "demo-0007"
    assert len(set(ids)) == 3 and all(isinstance(i, str) for i in ids)

    reader = EpisodeStore(uri, mode="r")
    assert reader.spec == SPEC
    assert reader.num_episodes == 3
    assert reader.episode_ids() == ids
    np.testing.assert_array_equal(reader.episode_ends, [5, 6, 15])
    np.testing.assert_array_equal(reader.episode_lengths, [5, 1, 9])
    for eid, want in zip(ids, episodes, strict=True):
        steps, m = reader.read_episode(eid)
        assert_steps_equal(steps, want)
        assert m["id"] == eid and m["length"] == len(want["action"])
    m0, m1, m2 = (reader.episode_metadata(i) for i in ids)
    assert (m0["source"], m0["operator"], m0["extra"], m0["terminated"]) == ("demo", "ana", {"bag": "x.mcap"}, True)
    assert (m1["source"], m1["success"], m1["terminated"]) == ("online", False, False)
    # success defaults to "all subtasks succeeded"
    assert m2["subtask_success"] == {"grasp": True, "place": False} and m2["success"] is False
    assert m0["return"] == pytest.approx(1.0) and m2["return"] == pytest.approx(21.0)

    snap = reader.load_arrays()
    assert snap.num_episodes == 3 and snap.num_steps == 15
    np.testing.assert_array_equal(snap.episode_starts, [0, 5, 6])
    for k in SPEC.step_arrays():
        np.testing.assert_array_equal(snap.arrays[k], np.concatenate([e[k] for e in episodes]).astype(snap.arrays[k].dtype))
        assert not snap.arrays[k].flags.writeable
    with pytest.raises(KeyError, match="no committed episode"):
        reader.read_episode("nope")


def test_plain_zarr_mirror_matches_commit_record(tmp_path):
    uri = str(tmp_path / "s")
    store = EpisodeStore(uri, mode="a", spec=SPEC)
    for i, n in enumerate((3, 4)):
        store.append_episode(make_episode(n, i), meta())
    group = zarr.open_group(uri, mode="r")
    np.testing.assert_array_equal(group["meta/episode_ends"][:], [3, 7])
    assert group.attrs["schema_version"] == 1
    assert group.attrs["spec"] == SPEC.to_json()
    assert [m["id"] for m in group.attrs["episodes"]] == store.episode_ids()
    assert group["data/action"].shape == (7, 3)


def test_reader_refresh_sees_episodes_committed_later(uri):
    writer = EpisodeStore(uri, mode="a", spec=SPEC)
    writer.append_episode(make_episode(4, 1), meta())
    reader = EpisodeStore(uri, mode="r")
    old = reader.load_arrays()
    writer.append_episode(make_episode(6, 2), meta())
    writer.append_episode(make_episode(2, 3), meta())
    assert reader.num_episodes == 1  # as of the last refresh, by contract
    assert reader.refresh() == 2
    assert reader.refresh() == 0
    new = reader.load_arrays()
    assert reader.episode_ids() == writer.episode_ids()
    assert new.num_steps == 12 and old.num_steps == 4
    np.testing.assert_array_equal(new.arrays["action"][4:10], make_episode(6, 2)["action"])
    np.testing.assert_array_equal(old.arrays["action"], make_episode(4, 1)["action"])  # old snapshot unchanged
    # the writer's own snapshot follows its appends without re-reading
    wsnap = writer.load_arrays()
    writer.append_episode(make_episode(3, 4), meta())
    assert writer.load_arrays().num_steps == wsnap.num_steps + 3
    np.testing.assert_array_equal(writer.load_arrays().arrays["hand_joints"][-3:], make_episode(3, 4)["hand_joints"])


def test_writer_removes_stale_record_temp_file_on_memory_store(uri):
    EpisodeStore(uri, mode="a", spec=SPEC).append_episode(make_episode(2), meta(id="a"))
    fs, root = fsspec.core.url_to_fs(uri)
    stale = f"{root}/{COMMIT_RECORD_KEY}.deadbeef.tmp"
    fs.pipe_file(stale, b"{half a record")  # as left by a writer killed before the rename
    assert EpisodeStore(uri, mode="r").episode_ids() == ["a"]
    assert fs.exists(stale)  # readers never write
    EpisodeStore(uri, mode="a", spec=SPEC)
    assert not fs.exists(stale)


def test_file_url_is_the_local_store(tmp_path):
    EpisodeStore(f"file://{tmp_path}/s", mode="a", spec=SPEC).append_episode(make_episode(3), meta(id="e1"))
    assert EpisodeStore(tmp_path / "s", mode="r").episode_ids() == ["e1"]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_read_only_mode_never_writes(tmp_path):
    root = tmp_path / "s"
    writer = EpisodeStore(root, mode="a", spec=SPEC)
    writer.append_episode(make_episode(3), meta())
    before = _tree(root)
    reader = EpisodeStore(root, mode="r", spec=SPEC)
    reader.load_arrays()
    reader.refresh()
    reader.read_episode(reader.episode_ids()[0])
    with pytest.raises(PermissionError, match="read-only"):
        reader.append_episode(make_episode(3), meta())
    assert _tree(root) == before


def test_missing_store_and_creation_without_spec(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="nothing.*does not exist"):
        EpisodeStore(missing, mode="r")
    assert not missing.exists()  # mode "r" created nothing
    with pytest.raises(ValueError, match="needs a spec"):
        EpisodeStore(missing, mode="a")
    with pytest.raises(ValueError, match="mode"):
        EpisodeStore(missing, mode="w")


def test_refuses_foreign_directory_and_leaves_it_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ReplaySchemaError, match="not a replay store"):
        EpisodeStore(tmp_path, mode="a", spec=SPEC)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").attrs["x"] = 1
    with pytest.raises(ReplaySchemaError, match="'format'"):
        EpisodeStore(other, mode="a", spec=SPEC)


# ----------------------------------------------------------------------- schema errors


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        ("hand_joints", lambda e: e.pop("hand_joints")),
        ("gripper", lambda e: e.__setitem__("gripper", np.zeros((4, 1), np.float32))),
        ("action", lambda e: e.__setitem__("action", np.zeros((4, 2), np.float32))),
        ("reward", lambda e: e["reward"].__setitem__(2, np.nan)),
        ("hand_joints", lambda e: e["hand_joints"].__setitem__((1, 0), np.inf)),
        ("wrist_rgb", lambda e: e.__setitem__("wrist_rgb", e["wrist_rgb"].astype(np.float32) / 255)),
        ("timestamp", lambda e: e.__setitem__("timestamp", e["timestamp"][:3])),
        ("action", lambda e: e.__setitem__("action", np.zeros((4, 3), np.int64))),
    ],
    ids=["missing-key", "extra-key", "wrong-action-dim", "nan-reward", "inf-obs", "float-image", "ragged", "int-action"],
)
def test_append_validation_names_store_and_field(uri, field, mutate):
    store = EpisodeStore(uri, mode="a", spec=SPEC)
    episode = make_episode(4)
    mutate(episode)
    with pytest.raises(ReplaySchemaError) as info:
        store.append_episode(episode, meta())
    assert info.value.field == field
    assert uri in str(info.value) and repr(field) in str(info.value)
    assert store.num_episodes == 0
    assert EpisodeStore(uri, mode="r").num_episodes == 0


@pytest.mark.parametrize(
    ("field", "metadata"),
    [
        ("metadata.source", {"source": "teleop", "success": True, "terminated": True}),
        ("metadata.terminated", {"source": "demo", "success": True}),
        ("metadata.success", {"source": "demo", "terminated": False}),
        ("metadata.oops", {"source": "demo", "success": True, "terminated": True, "oops": 1}),
        ("metadata.id", {"source": "demo", "success": True, "terminated": True, "id": "../evil"}),
        ("metadata.extra", {"source": "demo", "success": True, "terminated": True, "extra": {"a": object()}}),
    ],
)
def test_metadata_validation(tmp_path, field, metadata):
    store = EpisodeStore(tmp_path / "s", mode="a", spec=SPEC)
    with pytest.raises(ReplaySchemaError) as info:
        store.append_episode(make_episode(2), metadata)
    assert info.value.field == field


def test_duplicate_episode_id_rejected(tmp_path):
    store = EpisodeStore(tmp_path / "s", mode="a", spec=SPEC)
    store.append_episode(make_episode(2), meta(id="same"))
    with pytest.raises(ValueError, match="already exists"):
        store.append_episode(make_episode(2), meta(id="same"))
    assert store.num_episodes == 1


def _respec(**kw) -> StoreSpec:
    fields = {"obs": dict(SPEC.obs), "action_dim": SPEC.action_dim, "control_rate_hz": SPEC.control_rate_hz}
    fields.update(kw)
    return StoreSpec(**fields)


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("data/cube_pose", _respec(obs={**SPEC.obs, "cube_pose": ObsKeySpec((7,), "lowdim")})),
        ("data/wrist_rgb", _respec(obs={"hand_joints": ObsKeySpec((4,), "lowdim")})),
        ("data/hand_joints", _respec(obs={**SPEC.obs, "hand_joints": ObsKeySpec((5,), "lowdim")})),
        ("action_dim", _respec(action_dim=17)),
        ("control_rate_hz", _respec(control_rate_hz=10.0)),
    ],
    ids=["missing-key", "extra-key", "wrong-shape", "wrong-action-dim", "wrong-rate"],
)
@pytest.mark.parametrize("mode", ["r", "a"])
def test_open_with_mismatched_spec(uri, field, spec, mode):
    EpisodeStore(uri, mode="a", spec=SPEC).append_episode(make_episode(2), meta())
    with pytest.raises(ReplaySchemaError) as info:
        EpisodeStore(uri, mode=mode, spec=spec)
    assert info.value.field == field and uri in str(info.value)


def test_unsupported_schema_version_and_missing_array(tmp_path):
    uri = str(tmp_path / "s")
    EpisodeStore(uri, mode="a", spec=SPEC).append_episode(make_episode(2), meta())
    group = zarr.open_group(uri, mode="r+")
    group.attrs["schema_version"] = 99
    for mode in ("r", "a"):
        with pytest.raises(ReplaySchemaError, match="99") as info:
            EpisodeStore(uri, mode=mode)
        assert info.value.field == "schema_version" and uri in str(info.value)
    group.attrs["schema_version"] = 1
    EpisodeStore(uri, mode="r")  # back to normal
    del group["data/hand_joints"]
    with pytest.raises(ReplaySchemaError) as info:
        EpisodeStore(uri, mode="r")
    assert info.value.field == "data/hand_joints"


def test_corrupt_commit_record(tmp_path):
    root = tmp_path / "s"
    EpisodeStore(root, mode="a", spec=SPEC).append_episode(make_episode(2), meta())
    record_path = root / COMMIT_RECORD_KEY
    good = record_path.read_bytes()
    record_path.write_bytes(good[: len(good) // 2])  # torn
    with pytest.raises(ReplayCorruptError, match="not valid JSON"):
        EpisodeStore(root, mode="r")
    edited = json.loads(good)
    edited["episode_ends"] = [1]
    record_path.write_text(json.dumps(edited))
    with pytest.raises(ReplayCorruptError, match="sha256"):
        EpisodeStore(root, mode="a")
    record_path.write_bytes(good)
    assert EpisodeStore(root, mode="r").num_episodes == 1


def test_record_pointing_past_the_data_is_reported(tmp_path):
    root = tmp_path / "s"
    store = EpisodeStore(root, mode="a", spec=SPEC)
    store.append_episode(make_episode(3), meta())
    zarr.open_array(str(root / "data" / "reward"), mode="r+").resize((1,))
    with pytest.raises(ReplayCorruptError, match="data/reward has 1 rows"):
        EpisodeStore(root, mode="r").load_arrays()


def test_interrupted_creation_is_finished_by_a_writer(tmp_path):
    root = tmp_path / "s"
    EpisodeStore(root, mode="a", spec=SPEC)
    os.remove(root / COMMIT_RECORD_KEY)  # as if killed before the record was published
    with pytest.raises(ReplayCorruptError, match="creation was interrupted"):
        EpisodeStore(root, mode="r")
    store = EpisodeStore(root, mode="a")  # spec recovered from the root attrs
    assert store.spec == SPEC
    store.append_episode(make_episode(2), meta(id="first"))
    assert EpisodeStore(root, mode="r").episode_ids() == ["first"]


def test_missing_record_with_listed_episodes_is_not_papered_over(tmp_path):
    root = tmp_path / "s"
    EpisodeStore(root, mode="a", spec=SPEC).append_episode(make_episode(2), meta())
    os.remove(root / COMMIT_RECORD_KEY)
    with pytest.raises(ReplayCorruptError, match="lists episodes"):
        EpisodeStore(root, mode="a", spec=SPEC)


def test_spec_validation():
    with pytest.raises(ValueError, match="reserved"):
        StoreSpec(obs={"action": ObsKeySpec((2,), "lowdim")}, action_dim=2, control_rate_hz=10)
    with pytest.raises(ValueError, match="rgb ObsKeySpec.shape"):
        ObsKeySpec((4, 4), "rgb")
    with pytest.raises(ValueError, match="kind"):
        ObsKeySpec((4,), "depth")
    with pytest.raises(ValueError, match="action_dim"):
        StoreSpec(obs={"q": ObsKeySpec((2,), "lowdim")}, action_dim=0, control_rate_hz=10)
    with pytest.raises(ValueError, match="control_rate_hz"):
        StoreSpec(obs={"q": ObsKeySpec((2,), "lowdim")}, action_dim=2, control_rate_hz=float("nan"))
    with pytest.raises(ValueError, match="must match"):
        StoreSpec(obs={"a/b": ObsKeySpec((2,), "lowdim")}, action_dim=2, control_rate_hz=10)

    assert StoreSpec(obs={"q": {"shape": [3], "kind": "lowdim"}}, action_dim=1,
                     control_rate_hz=5).obs["q"] == ObsKeySpec((3,), "lowdim")
    assert StoreSpec.from_json(json.loads(json.dumps(SPEC.to_json()))) == SPEC
