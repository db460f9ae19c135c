"""Opening a folder of rosbag2 bags: converted once into a cache store by sernf-bag2zarr's
converter, then labeled like any store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sernf_data" / "test"))
sb = pytest.importorskip("synthetic_bags")

from rqt_sernf_rewards.episode_source import EpisodeSource  # noqa: E402
from rqt_sernf_rewards.label_model import LabelDocument  # noqa: E402
from sernf_data.bag2zarr import ConversionConfig  # noqa: E402


def test_folder_of_bags_is_converted_and_labeled(tmp_path):
    folder = tmp_path / "today"
    folder.mkdir()
    sb.write_demo_bag(folder / "demo_0")
    cache = tmp_path / "cache.zarr"
    config = ConversionConfig(image_topics={"front_rgb": "/cameras/front/image_raw"})  # the bag's one camera
    source = EpisodeSource.open(folder, cache_dir=cache, conversion=config)
    rows = source.rows()
    assert len(rows) == 1 and rows[0].source == "demo" and not rows[0].labeled
    data = source.episode(rows[0].episode_id)
    assert data.camera_keys and data.length == rows[0].length
    doc = LabelDocument(data.episode_id, data.length, source.subtasks(), base=data.labels,
                        recorded_rewards=data.steps["reward"])
    doc.add_event(1, 1.0)
    doc.save(source.labels, author="t")
    again = EpisodeSource.open(folder, cache_dir=cache, conversion=config)  # converting again adds nothing
    assert [r.labels_version for r in again.rows()] == [1]


def test_neither_store_nor_bags_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an episode store"):
        EpisodeSource.open(tmp_path)
