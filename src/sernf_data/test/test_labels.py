"""Reward label sets: versioned saves, conflicts, history kept, the store-level reward switch
and the sampler-facing overlay (local and memory:// stores)."""

from __future__ import annotations

import json
import threading
import uuid

import fsspec
import numpy as np
import pytest

from sernf_data.labels import (
    LabelConflictError,
    LabelSet,
    LabelSettings,
    LabelStore,
    RewardEvent,
)
from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec

SPEC = StoreSpec(obs={"hand_joints": ObsKeySpec((2,), "lowdim")}, action_dim=2, control_rate_hz=10.0)


def episode(length: int, last_reward: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "hand_joints": np.zeros((length, 2), np.float32),
        "action": np.zeros((length, 2), np.float32),
        "reward": np.r_[np.zeros(length - 1), last_reward].astype(np.float32),
        "timestamp": np.arange(length) / 10.0,
    }


@pytest.fixture(params=["local", "memory"])
def store_uri(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "s.zarr")
    else:
        uri = f"memory://labels-{uuid.uuid4().hex}"
        yield uri
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)


@pytest.fixture
def store(store_uri):
    s = EpisodeStore(store_uri, mode="a", spec=SPEC)
    s.append_episode(episode(10), {"id": "demo-a", "source": "demo", "success": True, "terminated": True})
    s.append_episode(episode(6, 0.0), {"id": "online-b", "source": "online", "success": False, "terminated": False})
    return s


def test_versions_are_appended_and_old_sets_kept(store):
    labels = LabelStore(store.uri)
    assert labels.versions("demo-a") == [] and labels.newest("demo-a") is None
    v1 = labels.save("demo-a", [RewardEvent(3, 1.0, "retrieve")], {"retrieve": True, "cut": False},
                     parent_version=0, author="ann", tool="test 1")
    v2 = labels.save("demo-a", [RewardEvent(3, 1.0, "retrieve"), RewardEvent(8, 1.0, "cut")],
                     {"retrieve": True, "cut": True}, parent_version=1, author="bob", tool="test 1")
    assert (v1.version, v1.parent_version, v2.version, v2.parent_version) == (1, 0, 2, 1)
    assert v1.success is False and v2.success is True
    fresh = LabelStore(store.uri)  # no cache: read back from the files
    history = fresh.history("demo-a")
    assert [h.version for h in history] == [1, 2]
    assert [h.author for h in history] == ["ann", "bob"]
    assert history[0].events == (RewardEvent(3, 1.0, "retrieve"),)
    assert fresh.newest("demo-a").rewards(10).tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
    assert fresh.newest_versions() == {"demo-a": 2}
    # the raw data is untouched
    steps, _ = EpisodeStore(store.uri, mode="r").read_episode("demo-a")
    assert steps["reward"].tolist() == [0] * 9 + [1]


def test_stale_parent_is_a_conflict_and_writes_nothing(store):
    labels = LabelStore(store.uri)
    labels.save("demo-a", [RewardEvent(1, 1.0)], {}, parent_version=0, success=True, author="ann")
    window_two = LabelStore(store.uri)
    labels.save("demo-a", [RewardEvent(2, 1.0)], {}, parent_version=1, success=True, author="ann")
    with pytest.raises(LabelConflictError, match="version 2 by ann") as info:
        window_two.save("demo-a", [RewardEvent(5, 1.0)], {}, parent_version=1, success=True, author="bob")
    assert info.value.newest == 2 and info.value.parent_version == 1
    assert LabelStore(store.uri).newest("demo-a").events == (RewardEvent(2, 1.0),)


def test_concurrent_writers_of_the_same_version_one_wins(tmp_path):
    s = EpisodeStore(tmp_path / "s.zarr", mode="a", spec=SPEC)
    s.append_episode(episode(5), {"id": "e", "source": "demo", "success": True, "terminated": True})
    results: list[object] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        labels = LabelStore(s.uri)
        barrier.wait()
        try:
            results.append(labels.save("e", [RewardEvent(i % 5, 1.0)], {}, parent_version=0, success=True,
                                       author=f"w{i}"))
        except LabelConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [r for r in results if isinstance(r, LabelSet)]
    assert len(wins) == 1 and len(results) == 8
    assert LabelStore(s.uri).versions("e") == [1]
    assert LabelStore(s.uri).newest("e").author == wins[0].author
    assert not list((tmp_path / "s.zarr" / "labels" / "e").glob("*.inprogress"))


def test_tampered_label_set_is_refused(tmp_path):
    s = EpisodeStore(tmp_path / "s.zarr", mode="a", spec=SPEC)
    s.append_episode(episode(5), {"id": "e", "source": "demo", "success": True, "terminated": True})
    LabelStore(s.uri).save("e", [RewardEvent(1, 1.0)], {}, parent_version=0, success=True)
    path = tmp_path / "s.zarr" / "labels" / "e" / "v000001.json"
    doc = json.loads(path.read_text())
    doc["events"][0]["value"] = 100.0
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="sha256"):
        LabelStore(s.uri).newest("e")


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="step"):
        RewardEvent(-1, 1.0)
    with pytest.raises(ValueError, match="finite"):
        RewardEvent(1, float("nan"))
    with pytest.raises(ValueError, match="subtask"):
        RewardEvent(1, 1.0, "bad/name")
    with pytest.raises(ValueError, match="reward_source"):
        LabelSettings(reward_source="magic")
    with pytest.raises(ValueError, match="require_labels_for"):
        LabelSettings(require_labels_for=("teleop",))


def test_event_past_the_episode_end_is_refused(store):
    with pytest.raises(ValueError, match="6 steps"):
        LabelStore(store.uri).save("online-b", [RewardEvent(6, 1.0)], {}, parent_version=0, success=True,
                                   episode_length=6)
    assert LabelStore(store.uri).versions("online-b") == []


def test_store_level_reward_source_changes_what_samplers_see(store):
    labels = LabelStore(store.uri)
    labels.save("demo-a", [RewardEvent(2, 0.5, "retrieve"), RewardEvent(7, 1.0, "cut")],
                {"retrieve": True, "cut": False}, parent_version=0)
    reader = EpisodeStore(store.uri, mode="r")
    recorded = reader.load_arrays()
    assert recorded.arrays["reward"][:10].tolist() == [0] * 9 + [1]  # default: recorded rewards
    assert "labels_version" not in recorded.episodes[0]

    labels.write_settings(LabelSettings(reward_source="labels", require_labels_for=("online",)))
    snap = reader.load_arrays()
    assert snap.arrays["reward"][:10].tolist() == [0, 0, 0.5, 0, 0, 0, 0, 1, 0, 0]
    assert snap.arrays["reward"][10:].tolist() == [0] * 6  # unlabeled: recorded rewards
    assert snap.episodes[0]["labels_version"] == 1 and snap.episodes[0]["success"] is False
    assert snap.episodes[0]["return"] == 1.5
    assert snap.episodes[1]["awaiting_labels"] is True and snap.episodes[0]["awaiting_labels"] is False
    # the cached snapshot and the earlier object did not change
    assert recorded.arrays["reward"][:10].tolist() == [0] * 9 + [1]
    assert reader.read_episode("demo-a")[0]["reward"].tolist() == [0] * 9 + [1]

    # a run may override the store's choice
    reader.label_settings = LabelSettings(reward_source="recorded")
    assert reader.load_arrays().arrays["reward"][:10].tolist() == [0] * 9 + [1]


def test_episodes_ended_by_a_device_fault_wait_for_a_label_under_any_settings(store):
    """A reflex mid-episode (extra.device_fault, set by the policy node) keeps the episode out of
    training until a person labels it, even where labels are otherwise not used."""
    store.append_episode(episode(5), {"id": "online-reflex", "source": "online", "success": False,
                                      "terminated": False,
                                      "extra": {"device_fault": "device fault from /franka_bridge: reflex"}})
    reader = EpisodeStore(store.uri, mode="r")
    snap = reader.load_arrays()  # default settings: recorded rewards, no source requires labels
    waiting = {m["id"]: m["awaiting_labels"] for m in snap.episodes}
    assert waiting == {"demo-a": False, "online-b": False, "online-reflex": True}
    LabelStore(store.uri).save("online-reflex", [RewardEvent(3, 1.0)], {}, parent_version=0, success=True,
                               episode_length=5)
    assert reader.load_arrays().episodes[2]["awaiting_labels"] is False


def test_settings_round_trip_and_invalid_file(store_uri, store):
    labels = LabelStore(store_uri)
    assert labels.settings() == LabelSettings()
    wanted = LabelSettings(reward_source="labels", subtasks=("retrieve", "cut"), default_reward=2.0)
    labels.write_settings(wanted)
    assert LabelStore(store_uri).settings() == wanted
    if "://" not in store_uri:
        (LabelStore(store_uri).local_root / "labels" / "settings.json").write_text("{")
        with pytest.raises(ValueError, match="settings.json"):
            LabelStore(store_uri).settings()
