"""Crash safety: a labeler killed (SIGKILL) at random moments while saving in a loop leaves
the store readable, every published label set intact and the newest one complete."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sernf_data.labels import LabelSettings, LabelStore
from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec

LENGTH = 50

SAVER = """
import sys
from sernf_data.labels import LabelStore
from sernf_data.store import EpisodeStore
from rqt_sernf_rewards.label_model import LabelDocument

uri = sys.argv[1]
store = EpisodeStore(uri, mode="r")
labels = LabelStore(uri)
i = 0
while True:
    newest = labels.newest("ep")
    doc = LabelDocument("ep", store.episode_lengths[0].item(), ("a", "b"), base=newest)
    for k in range(20):  # a big label set: the write takes long enough to be interrupted
        doc.add_event((i + k) % 50, 1.0, "a" if k % 2 else "b")
    doc.set_subtask_success("a", i % 2 == 0)
    doc.save(labels, author=f"saver-{i}")
    i += 1
    print(i, flush=True)
"""


def test_sigkill_during_save_keeps_the_store_readable(tmp_path: Path):
    spec = StoreSpec(obs={"hand_joints": ObsKeySpec((2,), "lowdim")}, action_dim=2, control_rate_hz=10.0)
    store = EpisodeStore(tmp_path / "s.zarr", mode="a", spec=spec)
    store.append_episode({
        "hand_joints": np.zeros((LENGTH, 2), np.float32), "action": np.zeros((LENGTH, 2), np.float32),
        "reward": np.zeros(LENGTH, np.float32), "timestamp": np.arange(LENGTH) / 10.0,
    }, {"id": "ep", "source": "online", "success": False, "terminated": True})
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    rng = random.Random(1234)
    seen_versions = 0
    for _ in range(6):
        before = LabelStore(store.uri).versions("ep")
        proc = subprocess.Popen([sys.executable, str(script), str(store.uri)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            # Wait until it saves (python start-up under load takes seconds), then kill at random.
            deadline = time.monotonic() + 120
            while len(LabelStore(store.uri).versions("ep")) <= len(before) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        labels = LabelStore(store.uri)  # fresh reader: nothing cached
        versions = labels.versions("ep")
        assert len(versions) > len(before), "the saver never saved"
        assert versions == list(range(1, len(versions) + 1))  # no holes, no torn numbering
        for label_set in labels.history("ep"):  # every version parses and passes its sha256
            assert len(label_set.events) == 20 * label_set.version  # each save added 20 to its parent's
        assert labels.history("ep")[: len(before)] == LabelStore(store.uri).history("ep")[: len(before)]
        seen_versions = len(versions)
        # the sampler-facing read works and uses the newest complete set
        reader = EpisodeStore(store.uri, mode="r")
        reader.label_settings = LabelSettings(reward_source="labels")
        rewards = reader.load_arrays().arrays["reward"]
        assert float(rewards.sum()) == labels.newest("ep").total_reward
    assert seen_versions >= 6
