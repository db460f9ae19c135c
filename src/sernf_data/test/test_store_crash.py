"""Crash safety: a writer SIGKILLed at each point of an append leaves a store that opens, lists
exactly the committed episodes with intact data, and takes the next append.

The child process commits three episodes, then starts a large append with one step of the
protocol replaced by "tell the parent, then wait forever"; the parent kills it right then.
That makes the kill point deterministic instead of a race against the clock.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import sernf_learner
from sernf_data.spec import ObsKeySpec
from sernf_data.store import COMMIT_RECORD_KEY, EpisodeStore, StoreSpec

SPEC = StoreSpec(
    obs={"cam": ObsKeySpec((8, 8, 3), "rgb"), "q": ObsKeySpec((3,), "lowdim")},
    action_dim=2,
    control_rate_hz=10.0,
)
COMMITTED_LENGTHS = (40, 7, 61)
BIG_LENGTH = 60_000  # cam chunks hold 4096 rows: ~15 chunk files per array to be killed amid

CHILD = textwrap.dedent(
    """
    import sys, threading, time, uuid
    import numpy as np
    import zarr.storage._local as zlocal
    from sernf_data.store import EpisodeStore
    from test_replay_crash import SPEC, COMMITTED_LENGTHS, BIG_LENGTH, episode

    root, phase = sys.argv[1], sys.argv[2]
    told = threading.Lock()  # zarr writes chunks from several threads: announce once

    def stop_here():
        if told.acquire(blocking=False):
            print("KILL ME", flush=True)
        while True:
            time.sleep(60)

    store = EpisodeStore(root, mode="a", spec=SPEC)
    for i, n in enumerate(COMMITTED_LENGTHS):
        store.append_episode(episode(n, i + 1), {"source": "demo", "success": True, "terminated": True, "id": f"ep{i}"})
    print("COMMITTED", flush=True)

    if phase == "data":
        # Let a few chunk files of the big episode land (the boundary chunk among them),
        # then leave a half-written temp file and hang, as a writer killed mid-write would.
        original, writes = zlocal._put, [0]
        def put(path, value, exclusive=False):
            if "/c/" not in str(path):
                return original(path, value, exclusive)
            writes[0] += 1
            if writes[0] <= 6:
                return original(path, value, exclusive)
            tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(bytes(value.as_buffer_like())[: max(1, len(value) // 2)])
            stop_here()
        zlocal._put = put
    elif phase == "before_commit":
        EpisodeStore._publish_record = lambda self, record: stop_here()
    elif phase == "after_commit":
        EpisodeStore._sync_mirror = lambda self: stop_here()
    store.append_episode(episode(BIG_LENGTH, 9), {"source": "online", "success": False, "terminated": False, "id": "big"})
    print("FINISHED", flush=True)  # must not happen
    """
)


def episode(length: int, marker: int) -> dict[str, np.ndarray]:
    """Deterministic, non-zero data (zarr skips writing all-fill-value chunks)."""
    steps = np.arange(length)
    return {
        "cam": ((steps[:, None, None, None] * 7 + marker) % 251 + 1 + np.zeros((1, 8, 8, 3))).astype(np.uint8),
        "q": (marker * 1000.0 + steps[:, None] + np.array([0.1, 0.2, 0.3])).astype(np.float32),
        "action": (marker + steps[:, None] * np.array([1.0, -1.0])).astype(np.float32),
        "reward": np.full(length, marker, np.float32),
        "timestamp": steps / 10.0 + marker,
    }


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"child gave no line (rc={proc.poll()}): {proc.stderr.read()}")


def _kill_child_at(root: Path, phase: str, tmp_path: Path) -> None:
    (tmp_path / "test_replay_crash.py").write_text(Path(__file__).read_text())
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    package_parent = str(Path(sernf_learner.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), package_parent, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), phase],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert _read_line(proc, 60) == "COMMITTED"
        assert _read_line(proc, 60) == "KILL ME"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _assert_committed(store: EpisodeStore, ids: list[str]) -> None:
    assert store.episode_ids() == ids
    for i, eid in enumerate(ids[:3]):
        steps, meta = store.read_episode(eid)
        want = episode(COMMITTED_LENGTHS[i], i + 1)
        assert meta["length"] == COMMITTED_LENGTHS[i]
        for key, value in want.items():
            np.testing.assert_array_equal(steps[key], value.astype(steps[key].dtype), err_msg=f"{eid}/{key}")


@pytest.mark.parametrize(
    ("phase", "visible"),
    [("data", False), ("before_commit", False), ("after_commit", True)],
)
def test_writer_killed_mid_append(tmp_path, phase, visible):
    root = tmp_path / "store.zarr"
    _kill_child_at(root, phase, tmp_path)
    committed = ["ep0", "ep1", "ep2"] + (["big"] if visible else [])

    # Readers: the store opens, shows exactly the committed episodes, data intact.
    reader = EpisodeStore(root, mode="r", spec=SPEC)
    _assert_committed(reader, committed)
    snap = reader.load_arrays()
    assert snap.num_steps == sum(COMMITTED_LENGTHS) + (BIG_LENGTH if visible else 0)
    if phase == "data":
        assert list(root.rglob("*.partial")), "the kill should have left a torn temp file"
        assert zarr.open_array(str(root / "data" / "cam"), mode="r").shape[0] > sum(COMMITTED_LENGTHS)
    if visible:  # committed but the plain-zarr mirror lags until a writer opens the store
        big, _ = reader.read_episode("big")
        np.testing.assert_array_equal(big["q"], episode(BIG_LENGTH, 9)["q"])
        assert zarr.open_array(str(root / "meta" / "episode_ends"), mode="r").shape == (3,)

    # The next writer cleans up, repairs the mirror and appends after the committed end.
    writer = EpisodeStore(root, mode="a", spec=SPEC)
    assert not list(root.rglob("*.partial")) and not list(root.rglob("*.tmp"))
    ends = zarr.open_array(str(root / "meta" / "episode_ends"), mode="r")[:]
    np.testing.assert_array_equal(ends, reader.episode_ends)
    writer.append_episode(episode(5, 4), {"source": "online", "success": True, "terminated": True, "id": "after"})

    again = EpisodeStore(root, mode="r")
    _assert_committed(again, [*committed, "after"])
    steps, _ = again.read_episode("after")
    np.testing.assert_array_equal(steps["action"], episode(5, 4)["action"])
    total = sum(COMMITTED_LENGTHS) + (BIG_LENGTH if visible else 0) + 5
    assert zarr.open_array(str(root / "data" / "cam"), mode="r").shape[0] == total  # stale tail dropped
    assert (root / COMMIT_RECORD_KEY).exists()
