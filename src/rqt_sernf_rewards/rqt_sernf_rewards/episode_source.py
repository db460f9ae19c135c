"""Where episodes come from: an episode store (local path or fsspec URL) or a folder of
rosbag2 recordings, converted once into a cache store with ``sernf-bag2zarr``'s converter.

Pure Python (no Qt): the widgets ask this module for the episode list, an episode's arrays
and its newest label set, and save through its ``LabelStore``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sernf_data.labels import LabelSet, LabelSettings, LabelStore
from sernf_data.store import EpisodeStore

__all__ = ["EpisodeData", "EpisodeRow", "EpisodeSource", "ScalarTrack", "find_bags"]


@dataclass(frozen=True)
class EpisodeRow:
    """One line of the episode list."""

    episode_id: str
    source: str
    operator: str
    length: int
    labels_version: int
    """Newest label set (0: never labeled)."""
    labels_author: str
    total_reward: float
    """Sum of the rewards the newest labels give (recorded rewards if unlabeled)."""
    subtask_success: dict[str, bool]
    success: bool

    @property
    def labeled(self) -> bool:
        return self.labels_version > 0

    def success_text(self) -> str:
        if not self.subtask_success:
            return "yes" if self.success else "no"
        return " ".join(f"{k}{'✓' if v else '✗'}" for k, v in self.subtask_success.items())


@dataclass(frozen=True)
class ScalarTrack:
    """A scalar plot under the timeline: ``values [L, d]`` with one name per column."""

    title: str
    names: tuple[str, ...]
    values: np.ndarray


@dataclass(frozen=True)
class EpisodeData:
    episode_id: str
    steps: dict[str, np.ndarray]
    metadata: dict[str, Any]
    labels: LabelSet | None
    camera_keys: tuple[str, ...]
    scalars: tuple[ScalarTrack, ...]
    control_rate_hz: float

    @property
    def length(self) -> int:
        return int(self.steps["action"].shape[0])


def find_bags(folder: Path) -> list[Path]:
    """rosbag2 directories directly inside ``folder`` (or ``folder`` itself): a directory
    with a ``metadata.yaml`` or an ``.mcap`` / ``.db3`` file."""
    def is_bag(p: Path) -> bool:
        return p.is_dir() and ((p / "metadata.yaml").is_file() or any(p.glob("*.mcap")) or any(p.glob("*.db3")))

    if is_bag(folder):
        return [folder]
    return sorted(p for p in folder.iterdir() if is_bag(p)) if folder.is_dir() else []


def _default_cache(folder: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sernf-label"
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return base / f"{folder.name}-{digest}.zarr"


class EpisodeSource:
    """An episode store opened read-only for labeling (labels are written beside the data)."""

    def __init__(self, store: EpisodeStore, origin: str, conversion_notes: Sequence[str] = ()) -> None:
        self.store = store
        self.origin = origin
        self.conversion_notes = tuple(conversion_notes)
        self.labels: LabelStore = store.labels

    @classmethod
    def open(cls, location: str | os.PathLike[str], *, cache_dir: Path | None = None,
             conversion: Any = None, progress: Callable[[str], None] | None = None) -> EpisodeSource:
        """Open a store (path or URL) or convert a folder of bags into a cache store first
        (``conversion``: a ``sernf_data.bag2zarr.ConversionConfig``; None: its defaults)."""
        text = os.fspath(location)
        if "://" in text and not text.startswith("file://"):
            return cls(EpisodeStore(text, mode="r"), text)
        path = Path(os.path.expanduser(text.removeprefix("file://")))
        if (path / "zarr.json").is_file():
            return cls(EpisodeStore(path, mode="r"), str(path))
        bags = find_bags(path)
        if not bags:
            raise FileNotFoundError(f"{text}: neither an episode store (no zarr.json) nor a folder of rosbag2 bags")
        from sernf_data.bag2zarr import convert_bags  # only needed for bags (rosbags, scipy)

        target = cache_dir or _default_cache(path)
        if progress:
            progress(f"converting {len(bags)} bag(s) into {target}")
        report = convert_bags(bags, target, conversion)
        notes = [f"skipped {bag}: {why}" for bag, why in report.skipped.items()]
        if not (Path(target) / "zarr.json").is_file():
            raise ValueError(f"{text}: no bag could be converted: " + "; ".join(notes))
        return cls(EpisodeStore(target, mode="r"), f"{path} (bags, converted to {target})", notes)

    # -------------------------------------------------------------------------- reads

    def refresh(self) -> None:
        self.store.refresh()

    def settings(self) -> LabelSettings:
        return self.labels.settings()

    def subtasks(self) -> tuple[str, ...]:
        """The reward spec's subtasks: the store's label settings, else every subtask named in
        the episodes' metadata (first-seen order)."""
        configured = self.settings().subtasks
        if configured:
            return configured
        seen: dict[str, None] = {}
        for episode_id in self.store.episode_ids():
            for name in self.store.episode_metadata(episode_id).get("subtask_success", {}):
                seen.setdefault(name, None)
        return tuple(seen)

    def rows(self) -> list[EpisodeRow]:
        newest = self.labels.newest_versions()
        rows = []
        for episode_id in self.store.episode_ids():
            meta = self.store.episode_metadata(episode_id)
            version = newest.get(episode_id, 0)
            label_set = self.labels.load(episode_id, version) if version else None
            rows.append(EpisodeRow(
                episode_id=episode_id,
                source=meta["source"],
                operator=meta.get("operator") or "-",
                length=int(meta["length"]),
                labels_version=version,
                labels_author=label_set.author if label_set else "",
                total_reward=label_set.total_reward if label_set else float(meta.get("return", 0.0)),
                subtask_success=dict(label_set.subtask_success if label_set else meta.get("subtask_success", {})),
                success=label_set.success if label_set else bool(meta["success"]),
            ))
        return rows

    def episode(self, episode_id: str) -> EpisodeData:
        steps, meta = self.store.read_episode(episode_id)
        spec = self.store.spec
        cameras = tuple(k for k, ks in spec.obs.items() if ks.kind == "rgb")
        scalars = []
        for key, ks in spec.obs.items():
            if ks.kind != "lowdim":
                continue
            values = np.asarray(steps[key], dtype=np.float32)
            if "pose" in key and ks.shape[0] >= 3:
                # A pose [x, y, z, (quaternion)]: the height is what a labeler looks at.
                scalars.append(ScalarTrack(f"{key}: EE height (m)", ("z",), values[:, 2:3]))
            else:
                names = tuple(f"{key}[{i}]" for i in range(ks.shape[0]))
                scalars.append(ScalarTrack(key, names, values))
        return EpisodeData(
            episode_id=episode_id, steps=steps, metadata=meta, labels=self.labels.newest(episode_id),
            camera_keys=cameras, scalars=tuple(scalars), control_rate_hz=spec.control_rate_hz,
        )
