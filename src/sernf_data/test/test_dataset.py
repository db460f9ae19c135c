"""Dataset operations (copy/merge/filter/info) and the sernf-data CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sernf_data.cli import main as cli_main
from sernf_data.dataset import (
    EpisodeFilter,
    copy_episodes,
    merge_stores,
    select_episodes,
    store_info,
)
from sernf_data.store import EpisodeStore, ReplaySchemaError, StoreSpec

SPEC = StoreSpec(obs={"state": {"shape": (2,), "kind": "lowdim"}, "cam": {"shape": (2, 2, 3), "kind": "rgb"}},
                 action_dim=3, control_rate_hz=10.0)


def steps(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "state": rng.normal(size=(length, 2)).astype(np.float32),
        "cam": rng.integers(0, 256, size=(length, 2, 2, 3), dtype=np.uint8),
        "action": rng.normal(size=(length, 3)).astype(np.float32),
        "reward": rng.random(length).astype(np.float32),
        "timestamp": 100.0 * seed + 0.1 * np.arange(length),
    }


EPISODES = [  # id, source, operator, subtasks, length
    ("d0", "demo", "alice", {"retrieve": True, "cut": True}, 4),
    ("d1", "demo", "bob", {"retrieve": True, "cut": False}, 3),
    ("d2", "demo", "alice", {"retrieve": False, "cut": False}, 5),
    ("o0", "online", None, {"retrieve": True, "cut": True}, 2),
]


@pytest.fixture
def source(tmp_path):
    store = EpisodeStore(tmp_path / "src.zarr", mode="a", spec=SPEC)
    for i, (episode_id, src, operator, subtasks, length) in enumerate(EPISODES):
        store.append_episode(steps(length, i), {"id": episode_id, "source": src, "operator": operator,
                                                "subtask_success": subtasks, "terminated": True,
                                                "extra": {"bag": f"{episode_id}.mcap"}})
    return tmp_path / "src.zarr"


def tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_an_episode_read_from_one_store_appends_to_another(source, tmp_path):
    steps_in, meta = EpisodeStore(source).read_episode("d1")
    assert {"length", "return", "committed_unix"} <= set(meta)
    other = EpisodeStore(tmp_path / "other.zarr", mode="a", spec=SPEC)
    other.append_episode(steps_in, meta)
    back, back_meta = other.read_episode("d1")
    for key in steps_in:
        np.testing.assert_array_equal(back[key], steps_in[key])
    for key in ("source", "operator", "subtask_success", "success", "terminated", "extra", "length", "return"):
        assert back_meta[key] == meta[key], key
    # A length that contradicts the steps is refused, not silently replaced.
    with pytest.raises(ReplaySchemaError, match="metadata.length"):
        other.append_episode(steps_in, {**meta, "id": "x", "length": 99})


def test_select_by_source_success_operator_subtask_ids_and_limit(source):
    store = EpisodeStore(source)
    assert select_episodes(store) == ["d0", "d1", "d2", "o0"]
    assert select_episodes(store, EpisodeFilter(sources=("demo",))) == ["d0", "d1", "d2"]
    assert select_episodes(store, EpisodeFilter(success=True)) == ["d0", "o0"]
    assert select_episodes(store, EpisodeFilter(success=False, operators=("alice",))) == ["d2"]
    assert select_episodes(store, EpisodeFilter(subtasks={"retrieve": True, "cut": False})) == ["d1"]
    assert select_episodes(store, EpisodeFilter(ids=("o0", "d1"))) == ["d1", "o0"]
    assert select_episodes(store, EpisodeFilter(sources=("demo",), limit=2)) == ["d0", "d1"]
    with pytest.raises(KeyError, match="nope"):
        select_episodes(store, EpisodeFilter(ids=("nope",)))
    with pytest.raises(ValueError, match="sources"):
        EpisodeFilter(sources="demo")


def test_copy_subset_never_touches_the_source_and_is_resumable(source, tmp_path):
    before = tree(source)
    report = copy_episodes(source, tmp_path / "ok.zarr", EpisodeFilter(success=True))
    assert report.copied == ["d0", "o0"] and report.steps == 6
    assert tree(source) == before
    dst = EpisodeStore(tmp_path / "ok.zarr")
    assert dst.episode_ids() == ["d0", "o0"]
    src = EpisodeStore(source)
    for episode_id in dst.episode_ids():
        a, ma = src.read_episode(episode_id)
        b, mb = dst.read_episode(episode_id)
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert ma["extra"] == mb["extra"] and ma["operator"] == mb["operator"]
    # Rerunning (e.g. after an interruption) adds nothing twice.
    again = copy_episodes(source, tmp_path / "ok.zarr")
    assert again.copied == ["d1", "d2"] and again.already_present == ["d0", "o0"]
    assert EpisodeStore(tmp_path / "ok.zarr").num_episodes == 4
    with pytest.raises(ValueError, match="same store"):
        copy_episodes(source, source)


def test_merge_checks_specs_and_id_collisions_before_writing(source, tmp_path):
    second = EpisodeStore(tmp_path / "second.zarr", mode="a", spec=SPEC)
    second.append_episode(steps(6, 9), {"id": "d9", "source": "demo", "success": True, "terminated": False})
    report = merge_stores([source, tmp_path / "second.zarr"], tmp_path / "all.zarr", EpisodeFilter(sources=("demo",)))
    assert report.copied == ["d0", "d1", "d2", "d9"]
    assert EpisodeStore(tmp_path / "all.zarr").num_steps == 4 + 3 + 5 + 6
    # Same id, different episode: refused, and nothing is written.
    clash = EpisodeStore(tmp_path / "clash.zarr", mode="a", spec=SPEC)
    clash.append_episode(steps(2, 7), {"id": "d0", "source": "demo", "success": True, "terminated": True})
    with pytest.raises(ValueError, match="different content"):
        merge_stores([source, tmp_path / "clash.zarr"], tmp_path / "never.zarr")
    assert not (tmp_path / "never.zarr").exists()
    other_spec = StoreSpec(obs={"state": {"shape": (2,), "kind": "lowdim"}}, action_dim=3, control_rate_hz=10.0)
    EpisodeStore(tmp_path / "other.zarr", mode="a", spec=other_spec)
    with pytest.raises(ValueError, match="specs differ"):
        merge_stores([source, tmp_path / "other.zarr"], tmp_path / "never.zarr")


def test_info_summary(source):
    info = store_info(source)
    assert (info.episodes, info.steps, info.successes) == (4, 14, 2)
    assert info.sources == {"demo": 3, "online": 1}
    assert info.operators == {"-": 1, "alice": 2, "bob": 1}
    assert info.subtasks == {"cut": (4, 2), "retrieve": (4, 3)}
    assert info.arrays["cam"] == ((2, 2, 3), "uint8") and info.arrays["action"] == ((3,), "float32")
    assert (info.length_min, info.length_max) == (2, 5)
    assert info.size_bytes and info.size_bytes > 0


def test_cli_info_filter_merge_and_errors(source, tmp_path, capsys):
    assert cli_main(["info", str(source)]) == 0
    out = capsys.readouterr().out
    assert "episodes   4" in out and "cut" in out and "2/4 (50%)" in out and "alice 2" in out
    assert "cam" in out and "[2, 2, 3]" in out
    assert cli_main(["filter", str(source), str(tmp_path / "cut.zarr"), "--subtask", "cut=1", "--source", "demo"]) == 0
    assert EpisodeStore(tmp_path / "cut.zarr").episode_ids() == ["d0"]
    assert cli_main(["copy", str(source), str(tmp_path / "bob.zarr"), "--operator", "bob", "--failure"]) == 0
    assert EpisodeStore(tmp_path / "bob.zarr").episode_ids() == ["d1"]
    (tmp_path / "ids.txt").write_text("d2\no0\n")
    assert cli_main(["merge", str(tmp_path / "cut.zarr"), str(source), "--out", str(tmp_path / "m.zarr"),
                     "--ids-file", str(tmp_path / "ids.txt")]) == 2  # d2/o0 are not in cut.zarr
    assert "no episode" in capsys.readouterr().err
    assert cli_main(["merge", str(tmp_path / "cut.zarr"), str(tmp_path / "bob.zarr"), "--out", str(tmp_path / "m.zarr")]) == 0
    assert EpisodeStore(tmp_path / "m.zarr").episode_ids() == ["d0", "d1"]
    assert cli_main(["list", str(tmp_path / "m.zarr")]) == 0
    assert "d1" in capsys.readouterr().out
    assert cli_main(["info", str(tmp_path / "missing.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_runs_as_a_program(source):
    done = subprocess.run([sys.executable, "-m", "sernf_data.cli", "info", str(source)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sources    demo 3, online 1" in done.stdout
