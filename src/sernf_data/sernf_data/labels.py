"""Reward label sets: a person's sparse rewards for an episode, versioned next to the raw data.

The paper's rewards are sparse and given by a person after each demonstration and rollout
(+1 per completed subtask, §V-B and appendix E2). Labeling never touches the recorded arrays:
each save writes a NEW label set for one episode, and readers take the newest one.

Layout inside a store (beside ``data/`` and ``meta/``; zarr ignores it)::

    <store>/labels/settings.json              store-level choices (``LabelSettings``)
    <store>/labels/<episode id>/v000001.json  label set version 1 of that episode
    <store>/labels/<episode id>/v000002.json  version 2 (parent_version 1), ...

A label set (``LabelSet``) holds reward events (step, value, subtask), subtask success flags,
who saved it, when, with which tool, and the version it was edited from (``parent_version``).

Concurrency and crash safety (why: two labeling windows may save the same episode, the learner
reads while a person saves, and a window may be killed mid-save):

* A new version is written to a temporary name and then published under its final name with
  an operation that fails if that name exists (``os.link`` locally). Two writers that both
  start from version 3 race for ``v000004.json``: exactly one wins, the other gets
  ``LabelConflictError`` and nothing of it is visible. A writer whose parent is not the newest
  version is refused before writing (optimistic concurrency on ``parent_version``).
* A killed writer leaves at most a temporary file (``*.inprogress``), which readers never
  look at; every published file is complete (it appears by one link) and carries a sha256.
  Older versions are never modified or deleted, so no save can lose a label set.
* Object stores (fsspec URLs) have no exclusive create: the check-then-move there narrows the
  race but one labeler per remote store is assumed (the same contract as episode appends).

``LabelSettings.reward_source`` is the store-level switch that samplers honour: ``"recorded"``
(the rewards in ``data/reward``) or ``"labels"`` (rewards from each episode's newest label set,
recorded rewards for episodes without one). ``require_labels_for`` lists episode sources
(e.g. ``online``) whose episodes are held back from training until they have a label set.
``EpisodeStore.load_arrays`` applies both (see ``apply_labels``).

Pure Python/numpy/fsspec: no Qt, no rclpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import json
import math
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "LABELS_DIR",
    "REWARD_SOURCES",
    "LabelConflictError",
    "LabelSet",
    "LabelSettings",
    "LabelStore",
    "RewardEvent",
    "apply_labels",
    "labeled_snapshot",
]

LABELS_DIR = "labels"
SETTINGS_KEY = f"{LABELS_DIR}/settings.json"
LABEL_FORMAT = "sernf-label-set"
SETTINGS_FORMAT = "sernf-label-settings"
REWARD_SOURCES = ("recorded", "labels")
_VERSION_RE = re.compile(r"^v(\d{6,})\.json$")
_TEMP_SUFFIX = ".inprogress"  # not "*.tmp"/"*.partial": the episode writer's clean-up deletes those
_SUBTASK_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class LabelConflictError(RuntimeError):
    """The label set was edited from an older version than the newest one on disk."""

    def __init__(self, episode_id: str, parent_version: int, newest: int, newest_author: str | None) -> None:
        self.episode_id = episode_id
        self.parent_version = parent_version
        self.newest = newest
        who = f" by {newest_author}" if newest_author else ""
        super().__init__(
            f"episode {episode_id!r}: labels were edited from version {parent_version}, but version "
            f"{newest}{who} was saved meanwhile; reload the episode (your edits are kept in the window) "
            "and save again"
        )


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class RewardEvent:
    """One sparse reward: ``value`` received after step ``step``'s action, for ``subtask``."""

    step: int
    """Step index inside the episode (0 .. L-1): the reward lands in ``reward[step]``."""
    value: float
    """Reward value (the paper: +1 per completed subtask)."""
    subtask: str = ""
    """Subtask the reward belongs to; empty if none."""

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int | np.integer) or self.step < 0:
            raise ValueError(f"RewardEvent.step must be an int >= 0, got {self.step!r}")
        object.__setattr__(self, "step", int(self.step))
        value = float(self.value)
        if not math.isfinite(value):
            raise ValueError(f"RewardEvent.value must be finite, got {self.value!r}")
        object.__setattr__(self, "value", value)
        if not isinstance(self.subtask, str) or (self.subtask and not _SUBTASK_RE.match(self.subtask)):
            raise ValueError(f"RewardEvent.subtask must match {_SUBTASK_RE.pattern} or be empty, got {self.subtask!r}")

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "value": self.value, "subtask": self.subtask}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RewardEvent:
        return cls(step=data["step"], value=data["value"], subtask=data.get("subtask", ""))


@dataclass(frozen=True)
class LabelSet:
    """One saved version of an episode's labels (immutable once written)."""

    episode_id: str
    """Episode the labels belong to."""
    version: int
    """1, 2, ...: position in the episode's label history."""
    parent_version: int
    """Version the labeler started from (0: none); the newest version when it was saved."""
    events: tuple[RewardEvent, ...]
    """Reward events, sorted by step."""
    subtask_success: Mapping[str, bool]
    """Subtask -> completed, as marked by the labeler."""
    success: bool
    """Episode success (defaults to all subtasks completed)."""
    author: str
    """Who saved it."""
    created_unix: float
    """When it was saved (seconds since the epoch)."""
    tool: str
    """Which tool and version saved it (e.g. ``rqt_sernf_rewards 0.1.0``)."""
    note: str = ""
    """Free text."""

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"LabelSet.version must be an int >= 1, got {self.version!r}")
        if not isinstance(self.parent_version, int) or not 0 <= self.parent_version < self.version:
            raise ValueError(f"LabelSet.parent_version must be in [0, version), got {self.parent_version!r}")
        events = tuple(sorted(self.events, key=lambda e: (e.step, e.subtask, e.value)))
        if not all(isinstance(e, RewardEvent) for e in events):
            raise ValueError("LabelSet.events must be RewardEvents")
        object.__setattr__(self, "events", events)
        if not isinstance(self.subtask_success, Mapping) or not all(
            isinstance(k, str) and isinstance(v, bool | np.bool_) for k, v in self.subtask_success.items()
        ):
            raise ValueError(f"LabelSet.subtask_success must map names to bools, got {self.subtask_success!r}")
        object.__setattr__(self, "subtask_success", {k: bool(v) for k, v in sorted(self.subtask_success.items())})
        if not isinstance(self.success, bool | np.bool_):
            raise ValueError(f"LabelSet.success must be a bool, got {self.success!r}")
        object.__setattr__(self, "success", bool(self.success))

    @property
    def total_reward(self) -> float:
        return float(sum(e.value for e in self.events))

    def rewards(self, length: int) -> np.ndarray:
        """``[L]`` float32 reward array of an episode of ``length`` steps (sums per step)."""
        out = np.zeros(length, dtype=np.float32)
        for e in self.events:
            if e.step >= length:
                raise ValueError(f"label set v{self.version} of {self.episode_id!r}: event at step {e.step} "
                                 f"but the episode has {length} steps")
            out[e.step] += e.value
        return out

    def to_json(self) -> dict[str, Any]:
        payload = {
            "format": LABEL_FORMAT,
            "episode_id": self.episode_id,
            "version": self.version,
            "parent_version": self.parent_version,
            "events": [e.to_json() for e in self.events],
            "subtask_success": dict(self.subtask_success),
            "success": self.success,
            "author": self.author,
            "created_unix": self.created_unix,
            "tool": self.tool,
            "note": self.note,
        }
        payload["sha256"] = _digest(payload)
        return payload

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "label set") -> LabelSet:
        if not isinstance(data, Mapping) or data.get("format") != LABEL_FORMAT:
            raise ValueError(f"{where}: not a {LABEL_FORMAT} document")
        payload = dict(data)
        digest = payload.pop("sha256", None)
        if digest != _digest(payload):
            raise ValueError(f"{where}: fails its sha256 check (edited or torn)")
        try:
            return cls(
                episode_id=str(payload["episode_id"]),
                version=payload["version"],
                parent_version=payload["parent_version"],
                events=tuple(RewardEvent.from_json(e) for e in payload["events"]),
                subtask_success=payload["subtask_success"],
                success=payload["success"],
                author=str(payload["author"]),
                created_unix=float(payload["created_unix"]),
                tool=str(payload["tool"]),
                note=str(payload.get("note", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class LabelSettings:
    """Store-level labeling choices (``labels/settings.json``), honoured by every sampler."""

    reward_source: Literal["recorded", "labels"] = "recorded"
    """Rewards samplers use: ``recorded`` (``data/reward``) or ``labels`` (newest label set per
    episode; the recorded rewards where an episode has none)."""
    require_labels_for: tuple[str, ...] = ()
    """Episode sources (demo / online / distill) whose episodes are not trained on until they
    have a label set (e.g. ``("online",)`` when a person labels every rollout)."""
    subtasks: tuple[str, ...] = ()
    """The task's subtasks in order (the reward spec the labeling tool offers), e.g.
    ``("retrieve", "cut")``; empty: taken from the episodes' metadata."""
    default_reward: float = 1.0
    """Value of a reward event placed without choosing one (the paper: +1 per subtask)."""

    def __post_init__(self) -> None:
        if self.reward_source not in REWARD_SOURCES:
            raise ValueError(f"reward_source must be one of {REWARD_SOURCES}, got {self.reward_source!r}")
        from .store import EPISODE_SOURCES  # import here: store imports this module

        req = tuple(self.require_labels_for)
        bad = [s for s in req if s not in EPISODE_SOURCES]
        if bad:
            raise ValueError(f"require_labels_for: unknown episode sources {bad}, known {EPISODE_SOURCES}")
        object.__setattr__(self, "require_labels_for", req)
        subtasks = tuple(self.subtasks)
        bad = [s for s in subtasks if not isinstance(s, str) or not _SUBTASK_RE.match(s)]
        if bad or len(set(subtasks)) != len(subtasks):
            raise ValueError(f"subtasks must be distinct names matching {_SUBTASK_RE.pattern}, got {subtasks}")
        object.__setattr__(self, "subtasks", subtasks)
        if not math.isfinite(float(self.default_reward)):
            raise ValueError(f"default_reward must be finite, got {self.default_reward!r}")
        object.__setattr__(self, "default_reward", float(self.default_reward))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SETTINGS_FORMAT,
            "reward_source": self.reward_source,
            "require_labels_for": list(self.require_labels_for),
            "subtasks": list(self.subtasks),
            "default_reward": self.default_reward,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelSettings:
        if not isinstance(data, Mapping) or data.get("format") != SETTINGS_FORMAT:
            raise ValueError(f"not a {SETTINGS_FORMAT} document")
        return cls(
            reward_source=data.get("reward_source", "recorded"),
            require_labels_for=tuple(data.get("require_labels_for", ())),
            subtasks=tuple(data.get("subtasks", ())),
            default_reward=data.get("default_reward", 1.0),
        )


def _digest(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _episode_dir_name(episode_id: str) -> str:
    # Episode ids match the store's id pattern (letters, digits, _ . : -); ':' is fine on
    # POSIX and object stores, "." and ".." cannot occur (ids start with [A-Za-z0-9_]).
    if not episode_id or episode_id[0] == "." or "/" in episode_id:
        raise ValueError(f"bad episode id {episode_id!r}")
    return episode_id


def default_author() -> str:
    """The labeler's name: $SERNF_LABELER, else the login name."""
    name = os.environ.get("SERNF_LABELER")
    if name:
        return name
    with contextlib.suppress(OSError, KeyError):
        return getpass.getuser()
    return "unknown"


# ----------------------------------------------------------------------------- storage


@dataclass
class _Cached:
    newest: int
    label_set: LabelSet | None


class LabelStore:
    """Read and write the label sets of one episode store (local path or fsspec URL).

    Cheap to create; holds no lock. Reads list the ``labels/`` directory; parsed label sets
    are cached by (episode, version) since published versions never change.
    """

    def __init__(self, uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = os.fspath(uri)
        local = "://" not in self.uri or self.uri.startswith("file://")
        self.local_root: Path | None = None
        self.fs: Any = None
        self.root = ""
        if local:
            self.local_root = Path(os.path.expanduser(self.uri.removeprefix("file://"))).absolute()
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.uri, **dict(storage_options or {}))
            self.root = self.root.rstrip("/")
        self._cache: dict[tuple[str, int], LabelSet] = {}

    # ------------------------------------------------------------------------ settings

    def settings(self) -> LabelSettings:
        raw = self._read(SETTINGS_KEY)
        if raw is None:
            return LabelSettings()
        try:
            return LabelSettings.from_json(json.loads(raw))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"store {self.uri!r}: {SETTINGS_KEY} is invalid ({exc})") from exc

    def write_settings(self, settings: LabelSettings) -> None:
        """Replace the store-level settings (atomically: temp name + rename)."""
        if not isinstance(settings, LabelSettings):
            raise TypeError(f"settings must be a LabelSettings, got {type(settings).__name__}")
        data = json.dumps(settings.to_json(), indent=1).encode()
        tmp = f"{SETTINGS_KEY}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        if self.local_root is not None:
            (self.local_root / LABELS_DIR).mkdir(parents=True, exist_ok=True)
            (self.local_root / tmp).write_bytes(data)
            os.replace(self.local_root / tmp, self.local_root / SETTINGS_KEY)
        else:
            self.fs.pipe_file(self._path(tmp), data)
            self.fs.mv(self._path(tmp), self._path(SETTINGS_KEY))

    # --------------------------------------------------------------------------- reads

    def versions(self, episode_id: str) -> list[int]:
        """Published versions of an episode's labels, ascending (empty: never labeled)."""
        return sorted(self._listing().get(episode_id, ()))

    def newest_versions(self) -> dict[str, int]:
        """Episode id -> newest published version, for every labeled episode (one listing)."""
        return {ep: max(vs) for ep, vs in self._listing().items() if vs}

    def load(self, episode_id: str, version: int) -> LabelSet:
        key = (episode_id, version)
        if key not in self._cache:
            name = f"{LABELS_DIR}/{_episode_dir_name(episode_id)}/v{version:06d}.json"
            raw = self._read(name)
            if raw is None:
                raise KeyError(f"store {self.uri!r}: no label set {version} for episode {episode_id!r}")
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"store {self.uri!r}: {name} is not JSON ({exc})") from exc
            label_set = LabelSet.from_json(data, where=f"store {self.uri!r}: {name}")
            if label_set.episode_id != episode_id or label_set.version != version:
                raise ValueError(f"store {self.uri!r}: {name} names episode {label_set.episode_id!r} "
                                 f"version {label_set.version}")
            self._cache[key] = label_set
        return self._cache[key]

    def newest(self, episode_id: str) -> LabelSet | None:
        versions = self.versions(episode_id)
        return self.load(episode_id, versions[-1]) if versions else None

    def history(self, episode_id: str) -> list[LabelSet]:
        """Every published version, oldest first (none is ever deleted)."""
        return [self.load(episode_id, v) for v in self.versions(episode_id)]

    # -------------------------------------------------------------------------- writes

    def save(
        self,
        episode_id: str,
        events: Sequence[RewardEvent],
        subtask_success: Mapping[str, bool],
        *,
        parent_version: int,
        success: bool | None = None,
        author: str | None = None,
        tool: str = "sernf_data",
        note: str = "",
        episode_length: int | None = None,
    ) -> LabelSet:
        """Publish a new version edited from ``parent_version`` (0: the episode had none).

        Raises ``LabelConflictError`` (nothing written) if ``parent_version`` is not the newest
        version, including when another writer publishes the same version first.
        """
        newest = self.versions(episode_id)
        current = newest[-1] if newest else 0
        if parent_version != current:
            raise self._conflict(episode_id, parent_version, current)
        events = tuple(events)
        if episode_length is not None:
            late = [e.step for e in events if e.step >= episode_length]
            if late:
                raise ValueError(f"episode {episode_id!r} has {episode_length} steps; events at steps {late}")
        label_set = LabelSet(
            episode_id=episode_id,
            version=current + 1,
            parent_version=parent_version,
            events=events,
            subtask_success=dict(subtask_success),
            success=all(subtask_success.values()) if success is None and subtask_success else bool(success),
            author=author or default_author(),
            created_unix=time.time(),
            tool=tool,
            note=note,
        )
        data = json.dumps(label_set.to_json(), indent=1).encode()
        folder = f"{LABELS_DIR}/{_episode_dir_name(episode_id)}"
        final = f"{folder}/v{label_set.version:06d}.json"
        tmp = f"{folder}/.v{label_set.version:06d}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        if self.local_root is not None:
            (self.local_root / folder).mkdir(parents=True, exist_ok=True)
            tmp_path = self.local_root / tmp
            tmp_path.write_bytes(data)
            try:
                # link() publishes the complete file under its final name and fails if that
                # name exists: exactly one of two concurrent writers of version n+1 wins.
                os.link(tmp_path, self.local_root / final)
            except FileExistsError:
                raise self._conflict(episode_id, parent_version, self.versions(episode_id)[-1]) from None
            finally:
                tmp_path.unlink(missing_ok=True)
        else:
            self.fs.pipe_file(self._path(tmp), data)
            try:
                if self.fs.exists(self._path(final)):
                    raise self._conflict(episode_id, parent_version, self.versions(episode_id)[-1])
                self.fs.mv(self._path(tmp), self._path(final))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._path(tmp))
        self._cache[(episode_id, label_set.version)] = label_set
        return label_set

    # ------------------------------------------------------------------------ internals

    def _conflict(self, episode_id: str, parent: int, newest: int) -> LabelConflictError:
        author = None
        with contextlib.suppress(KeyError, ValueError):
            author = self.load(episode_id, newest).author if newest else None
        return LabelConflictError(episode_id, parent, newest, author)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _read(self, key: str) -> bytes | None:
        try:
            if self.local_root is not None:
                return (self.local_root / key).read_bytes()
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None

    def _listing(self) -> dict[str, list[int]]:
        """Episode id -> published versions (temporary files are not versions)."""
        out: dict[str, list[int]] = {}
        if self.local_root is not None:
            base = self.local_root / LABELS_DIR
            if not base.is_dir():
                return out
            for folder in base.iterdir():
                if folder.is_dir():
                    out[folder.name] = [int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_RE.match(p.name))]
            return out
        base = self._path(LABELS_DIR)
        if not self.fs.exists(base):
            return out
        for path in self.fs.find(base):
            rel = path[len(base) + 1 :] if path.startswith(base) else path
            parts = rel.split("/")
            if len(parts) == 2 and (m := _VERSION_RE.match(parts[1])):
                out.setdefault(parts[0], []).append(int(m.group(1)))
        return out


# ----------------------------------------------------------------------------- readers


@dataclass
class LabelOverlay:
    """What ``apply_labels`` derived for a snapshot (kept for reporting)."""

    labeled: int = 0
    awaiting: int = 0
    versions: dict[str, int] = field(default_factory=dict)


def apply_labels(
    reward: np.ndarray,
    episode_ends: np.ndarray,
    episodes: Sequence[Mapping[str, Any]],
    labels: LabelStore,
    settings: LabelSettings,
) -> tuple[np.ndarray, list[dict[str, Any]], LabelOverlay]:
    """Rewards and metadata as samplers should see them under ``settings``.

    Returns a new ``[S]`` reward array (the recorded one, with each labeled episode's rows
    replaced by its newest label set when ``reward_source == "labels"``) and a copy of the
    per-episode metadata with ``labels_version`` (0: none) and ``awaiting_labels`` (no label
    set, and the source is in ``require_labels_for`` or the episode ended on a device fault,
    ``extra.device_fault``: a reflex mid-episode makes its recorded rewards untrustworthy) added; with label rewards, ``success``,
    ``subtask_success`` and ``return`` follow the label set too. Inputs are not modified.
    """
    newest = labels.newest_versions()
    out_reward = np.array(reward, dtype=np.float32, copy=True)
    out_meta: list[dict[str, Any]] = []
    overlay = LabelOverlay()
    start = 0
    for end, meta in zip(np.asarray(episode_ends).tolist(), episodes, strict=True):
        m = dict(meta)
        version = newest.get(m["id"], 0)
        m["labels_version"] = version
        m["awaiting_labels"] = version == 0 and (m.get("source") in settings.require_labels_for
                                                 or has_device_fault(m))
        overlay.awaiting += int(m["awaiting_labels"])
        if version:
            overlay.labeled += 1
            overlay.versions[m["id"]] = version
            if settings.reward_source == "labels":
                label_set = labels.load(m["id"], version)
                out_reward[start:end] = label_set.rewards(end - start)
                m["success"] = label_set.success
                m["subtask_success"] = dict(label_set.subtask_success)
                m["return"] = label_set.total_reward
        out_meta.append(m)
        start = end
    out_reward.flags.writeable = False
    return out_reward, out_meta, overlay


def has_device_fault(metadata: Mapping[str, Any]) -> bool:
    """Whether an episode ended on a device fault (``extra.device_fault``, set by the policy
    node when a driver such as franka_bridge aborts it): such episodes train only once labeled."""
    extra = metadata.get("extra")
    return isinstance(extra, Mapping) and bool(extra.get("device_fault"))


def labeled_snapshot(snapshot: Any, labels: LabelStore, settings: LabelSettings) -> Any:
    """``snapshot`` (a ``ReplaySnapshot``) as samplers see it under ``settings``: rewards and
    metadata from ``apply_labels``; the snapshot itself when labels change nothing (recorded
    rewards and no episode waits for labels), so stores without labels pay nothing."""
    if (settings.reward_source == "recorded" and not settings.require_labels_for
            and not any(has_device_fault(m) for m in snapshot.episodes)):
        return snapshot
    reward, episodes, _ = apply_labels(
        snapshot.arrays["reward"], snapshot.episode_ends, snapshot.episodes, labels, settings)
    return dataclasses.replace(
        snapshot, arrays={**snapshot.arrays, "reward": reward}, episodes=tuple(episodes))
