"""Episode store: complete robot episodes in a zarr (v3) store, on disk or behind any fsspec URL.

Layout (docs/design.md §5)::

    <store>/zarr.json                root attrs: format, schema_version, spec (StoreSpec JSON),
                                     episodes (mirror of the per-episode metadata), generation
    <store>/data/<obs key>           [S, ...]  observations, concatenated over all episodes
    <store>/data/action              [S, A]    float32, the *executed* (clipped) action
    <store>/data/reward              [S]       float32, reward received after the step's action
    <store>/data/timestamp           [S]       float64, seconds
    <store>/meta/episode_ends        [N]       int64, exclusive end of each episode (mirror)
    <store>/meta/commit.json         the commit record: the single source of truth (see below)

``S`` is the number of committed steps, ``N`` the number of committed episodes; episode ``i``
occupies rows ``episode_ends[i-1]:episode_ends[i]`` (``0`` for ``i == 0``) of every data array.

Commit protocol (why: an actor may be killed at any time, and the learner may read while the
actor writes, possibly on another machine):

1. The writer reads the commit record; its last episode end ``E`` is the committed end.
   Rows ``>= E`` of the data arrays are *uncommitted*: readers never look at them.
2. It resizes every ``data/<key>`` to ``E + L`` (dropping any tail a killed writer left) and
   writes the new episode into rows ``E:E+L``, one batched write per array. Chunk files are
   written atomically (zarr's LocalStore: temp file + rename; object stores: whole-object PUT),
   so the chunk straddling ``E`` always holds intact committed rows, old or new version.
3. It commits by publishing a new record (``generation + 1``, episode ends and metadata) under
   a temporary name and renaming it over ``meta/commit.json`` (``os.replace`` locally, fsspec
   ``mv`` for URLs). The rename is the commit point: before it the episode does not exist.
4. It then refreshes the mirrors (``meta/episode_ends``, root attrs ``episodes``) for tools
   that read plain zarr. They may lag after a crash; readers ignore them and the next append
   rewrites them.
5. Readers read the record first and only rows ``< episode_ends[-1]``; committed rows are
   never rewritten, so a reader sees either the old or the new set of complete episodes.

The guarantee covers a writer process dying at any point (SIGKILL, OOM, exception). It does
not cover power loss: nothing is fsynced (zarr does not fsync chunk files either).

Local stores serialize writers with an ``flock`` on ``.sernf-writer.lock`` (released by the
kernel if the writer dies); remote (fsspec URL) stores assume one writer per store. A store
opened with ``mode="r"`` never writes: no lock, no cleanup, read-only zarr store.

The module is pure numpy/zarr/fsspec (no rclpy, no torch).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from .labels import LabelSettings, LabelStore, labeled_snapshot
from .spec import KEY_PATTERN, STEP_ARRAY_KEYS, ObsKeySpec

__all__ = [
    "EPISODE_SOURCES",
    "SCHEMA_VERSION",
    "EpisodeStore",
    "ReplayCorruptError",
    "ReplaySchemaError",
    "ReplaySnapshot",
    "StoreSpec",
]

SCHEMA_VERSION = 1
"""Version written into new stores (root attr ``schema_version``)."""

SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
"""Versions this code reads and appends to."""

STORE_FORMAT = "sernf-replay"
"""Root attr ``format``: tells our stores apart from other zarr groups."""

RECORD_FORMAT = "sernf-replay-commit"
COMMIT_RECORD_KEY = "meta/commit.json"
LOCK_NAME = ".sernf-writer.lock"
EPISODE_SOURCES = ("demo", "online", "distill")
STEP_KEYS = STEP_ARRAY_KEYS
"""Per-step arrays every episode carries besides its observations."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
_METADATA_KEYS = frozenset(
    {"id", "source", "success", "subtask_success", "terminated", "operator", "extra"}
)
#: Keys the store derives itself when it commits an episode. ``read_episode`` returns them, so
#: metadata read from one store is accepted by ``append_episode`` of another: ``length`` must
#: match the steps, ``return`` is recomputed, ``committed_unix`` becomes the new commit time.
DERIVED_METADATA_KEYS = frozenset({"length", "return", "committed_unix"})
# Rows per chunk are chosen so one chunk holds about this many uncompressed bytes: large enough
# for fast bulk loads, small enough that an append's read-modify-write of the boundary chunk
# stays cheap.
_TARGET_CHUNK_BYTES = 1 << 20


class ReplaySchemaError(ValueError):
    """Data or a store does not match the expected schema. Names the store URI and the field."""

    def __init__(self, uri: str, field: str, problem: str) -> None:
        self.uri = uri
        self.field = field
        super().__init__(f"replay store {uri!r}: field {field!r}: {problem}")


class ReplayCorruptError(RuntimeError):
    """The store's commit record (or its relation to the data) is damaged or inconsistent."""

    def __init__(self, uri: str, problem: str) -> None:
        self.uri = uri
        super().__init__(f"replay store {uri!r} is corrupt: {problem}")


# ------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class StoreSpec:
    """What every episode in a store carries: observation keys, action size, control rate."""

    obs: Mapping[str, ObsKeySpec]
    """Observation key -> spec (``ObsKeySpec``, the observation contract of sernf_data.spec,
    or its ``{"shape", "kind"}`` dict form)."""
    action_dim: int
    """``A``: size of the executed action vector."""
    control_rate_hz: float
    """Rate at which steps were recorded (actions executed), e.g. 10 (scissors) or 20 (cube)."""

    def __post_init__(self) -> None:
        if not isinstance(self.obs, Mapping) or not self.obs:
            raise ValueError("StoreSpec.obs must be a non-empty mapping of observation keys")
        converted: dict[str, ObsKeySpec] = {}
        for name, ks in self.obs.items():
            if not isinstance(name, str) or not KEY_PATTERN.match(name):
                raise ValueError(
                    f"observation key {name!r} must match {KEY_PATTERN.pattern} (it names a zarr array)"
                )
            if name in STEP_KEYS:
                raise ValueError(f"observation key {name!r} is reserved for the per-step arrays")
            if isinstance(ks, ObsKeySpec):
                converted[name] = ks
            elif isinstance(ks, Mapping):
                converted[name] = ObsKeySpec.from_dict(ks)
            else:
                raise ValueError(f"observation key {name!r}: cannot read a spec from {ks!r}")
        # Sorted so two specs with the same keys compare and serialize identically.
        object.__setattr__(self, "obs", dict(sorted(converted.items())))
        if isinstance(self.action_dim, bool) or not isinstance(self.action_dim, int | np.integer):
            raise ValueError(f"action_dim must be an int, got {self.action_dim!r}")
        object.__setattr__(self, "action_dim", int(self.action_dim))
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        rate = float(self.control_rate_hz)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"control_rate_hz must be a positive number, got {self.control_rate_hz!r}")
        object.__setattr__(self, "control_rate_hz", rate)

    def step_arrays(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Every per-step array of an episode: name -> (per-step shape, storage dtype)."""
        out = {name: (ks.shape, ks.dtype) for name, ks in self.obs.items()}
        out["action"] = ((self.action_dim,), np.dtype(np.float32))
        out["reward"] = ((), np.dtype(np.float32))
        # float64: wall-clock seconds since the epoch need more than float32's 7 digits.
        out["timestamp"] = ((), np.dtype(np.float64))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "obs": {name: ks.to_dict() for name, ks in self.obs.items()},
            "action_dim": self.action_dim,
            "control_rate_hz": self.control_rate_hz,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreSpec:
        return cls(
            obs={k: ObsKeySpec.from_dict(v) for k, v in data["obs"].items()},
            action_dim=int(data["action_dim"]),
            control_rate_hz=float(data["control_rate_hz"]),
        )


# ------------------------------------------------------------------------------ snapshot


@dataclass(frozen=True)
class ReplaySnapshot:
    """Read-only in-memory copy of all committed episodes at one generation (for samplers).

    Arrays are views into buffers the store only ever extends past their end, so a snapshot
    stays valid (and unchanged) after the store refreshes.
    """

    arrays: Mapping[str, np.ndarray]
    """Every data array, ``[S, ...]`` over all committed steps, read-only."""
    episode_ends: np.ndarray
    """``[N]`` int64 exclusive ends."""
    episodes: tuple[Mapping[str, Any], ...]
    """Per-episode metadata, in commit order."""
    generation: int
    """Commit-record generation this snapshot reflects."""

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.episode_ends[-1]) if self.num_episodes else 0

    @property
    def episode_starts(self) -> np.ndarray:
        """``[N]`` int64 first row of each episode."""
        return (self.episode_ends - self.episode_lengths).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        """``[N]`` int64 number of steps of each episode."""
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)


# ------------------------------------------------------------------------- commit record


@dataclass
class _CommitRecord:
    generation: int
    episode_ends: list[int] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def committed_end(self) -> int:
        return self.episode_ends[-1] if self.episode_ends else 0

    def to_bytes(self) -> bytes:
        payload = {
            "format": RECORD_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "generation": self.generation,
            "episode_ends": self.episode_ends,
            "episodes": self.episodes,
        }
        payload["sha256"] = _digest(payload)
        return json.dumps(payload, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, uri: str, raw: bytes) -> _CommitRecord:
        where = f"commit record {COMMIT_RECORD_KEY}"
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReplayCorruptError(uri, f"{where} is not valid JSON ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != RECORD_FORMAT:
            raise ReplayCorruptError(uri, f"{where} has no format {RECORD_FORMAT!r}")
        digest = payload.pop("sha256", None)
        if digest != _digest(payload):
            raise ReplayCorruptError(uri, f"{where} fails its sha256 check (edited or torn)")
        version = payload.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ReplaySchemaError(
                uri, "schema_version",
                f"commit record has version {version!r}, supported {sorted(SUPPORTED_SCHEMA_VERSIONS)}",
            )
        gen, ends, episodes = payload.get("generation"), payload.get("episode_ends"), payload.get("episodes")
        if not isinstance(gen, int) or gen < 0:
            raise ReplayCorruptError(uri, f"{where}: bad generation {gen!r}")
        if not isinstance(ends, list) or not isinstance(episodes, list) or len(ends) != len(episodes):
            raise ReplayCorruptError(uri, f"{where}: episode_ends and episodes disagree")
        prev, seen = 0, set()
        for end, meta in zip(ends, episodes, strict=True):
            if not isinstance(end, int) or end <= prev:
                raise ReplayCorruptError(uri, f"{where}: episode_ends not strictly increasing")
            if not isinstance(meta, dict) or meta.get("length") != end - prev:
                raise ReplayCorruptError(uri, f"{where}: episode length does not match its ends")
            if meta.get("id") in seen:
                raise ReplayCorruptError(uri, f"{where}: duplicate episode id {meta.get('id')!r}")
            seen.add(meta.get("id"))
            prev = end
        return cls(generation=gen, episode_ends=list(ends), episodes=episodes)


def _digest(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------ location


class _Location:
    """Where a store lives: a local directory (zarr LocalStore) or an fsspec URL (FsspecStore).

    Holds the non-zarr file operations the protocol needs: reading the record, publishing it
    atomically, the writer lock and clean-up of temp files left by a killed writer.
    """

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        local = "://" not in uri or uri.startswith("file://")
        # file:// URLs go to LocalStore too: fsspec's local writes are not atomic, LocalStore's are.
        self.local_root: Path | None = None
        if local:
            self.local_root = Path(os.path.expanduser(uri.removeprefix("file://"))).absolute()
            self.fs, self.root = None, ""
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(uri, **self.storage_options)
            self.root = self.root.rstrip("/")

    def zarr_store(self, read_only: bool) -> zarr.abc.store.Store:
        if self.local_root is not None:
            return LocalStore(self.local_root, read_only=read_only)
        return FsspecStore.from_url(self.uri, storage_options=self.storage_options, read_only=read_only)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def exists(self, key: str) -> bool:
        if self.local_root is not None:
            return (self.local_root / key).is_file()
        return bool(self.fs.exists(self._path(key)))

    def read_bytes(self, key: str) -> bytes | None:
        try:
            if self.local_root is not None:
                return (self.local_root / key).read_bytes()
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None

    def write_atomic(self, key: str, data: bytes) -> None:
        tmp = f"{key}.{uuid.uuid4().hex}.tmp"
        if self.local_root is not None:
            tmp_path = self.local_root / tmp
            tmp_path.write_bytes(data)
            os.replace(tmp_path, self.local_root / key)
        else:
            self.fs.pipe_file(self._path(tmp), data)
            self.fs.mv(self._path(tmp), self._path(key))

    def is_empty(self) -> bool:
        """True if nothing (besides our lock file) is at the location."""
        if self.local_root is not None:
            if not self.local_root.exists():
                return True
            return all(p.name == LOCK_NAME for p in self.local_root.iterdir())
        if not self.fs.exists(self.root):
            return True
        return not self.fs.ls(self.root, detail=False)

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        if self.local_root is None:
            yield  # remote stores: one writer per store by contract (documented above)
            return
        import fcntl

        self.local_root.mkdir(parents=True, exist_ok=True)
        with open(self.local_root / LOCK_NAME, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def remove_temp_files(self) -> int:
        """Delete temp files a killed writer left (zarr's ``*.partial``, our ``*.tmp``).

        Called only under the writer lock, where no other writer can be mid-write.
        """
        if self.local_root is None:
            # Object stores write whole objects; only our record temp files can be left over.
            stale = self.fs.glob(self._path(f"{COMMIT_RECORD_KEY}.*.tmp"))
            for path in stale:
                self.fs.rm_file(path)
            return len(stale)
        removed = 0
        for pattern in ("*.partial", "*.tmp"):
            for p in self.local_root.rglob(pattern):
                p.unlink(missing_ok=True)
                removed += 1
        return removed


# ----------------------------------------------------------------------------- the store


class EpisodeStore:
    """Complete episodes in a zarr store; see the module docstring for layout and protocol.

    ``mode="a"`` opens (creating it from ``spec`` if missing) for appending; ``mode="r"`` opens
    an existing store read-only. ``spec``, when given for an existing store, must match it.
    Counts, ids and ends reflect the store as of the last open, ``append_episode`` or
    ``refresh()``. One instance is meant for one thread (the training loop or the recorder);
    several processes may share a store (one writer per remote store, see above).
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        mode: Literal["a", "r"] = "r",
        spec: StoreSpec | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("a", "r"):
            raise ValueError(f"mode must be 'a' or 'r', got {mode!r}")
        if spec is not None and not isinstance(spec, StoreSpec):
            raise TypeError(f"spec must be a StoreSpec, got {type(spec).__name__}")
        self.uri = os.fspath(uri)
        self.mode = mode
        self._loc = _Location(self.uri, storage_options)
        self._buffers: dict[str, np.ndarray] = {}
        self._snapshot: ReplaySnapshot | None = None
        #: Reward labels as samplers see them (sernf_data.labels): None reads the store's own
        #: ``labels/settings.json`` at each ``load_arrays``; a run may set its own choice here.
        self.label_settings: LabelSettings | None = None
        self.labels = LabelStore(self.uri, storage_options)
        if mode == "r":
            if not self._loc.exists("zarr.json"):
                raise FileNotFoundError(
                    f"replay store {self.uri!r} does not exist (opened with mode='r'; "
                    "open with mode='a' and a StoreSpec to create it)"
                )
            self._group = zarr.open_group(store=self._loc.zarr_store(read_only=True), mode="r")
            self._check_root_attrs()
            record = self._read_record()
            if record is None:
                raise ReplayCorruptError(
                    self.uri,
                    f"no commit record {COMMIT_RECORD_KEY}: its creation was interrupted "
                    "(opening it once with mode='a' and its spec finishes it)",
                )
            self.spec = self._check_schema(spec)
            self._record = record
            return
        with self._loc.writer_lock():
            record = self._read_record()
            if record is None:
                self._create(self._spec_for_create(spec))
            else:
                self._group = zarr.open_group(store=self._loc.zarr_store(read_only=False), mode="r+")
                self._check_root_attrs()
                self.spec = self._check_schema(spec)
                self._loc.remove_temp_files()
                self._record = record
                if self._group.attrs.get("generation") != record.generation:
                    self._sync_mirror()  # a writer died between commit and mirror update

    # --------------------------------------------------------------------- public reads

    @property
    def num_episodes(self) -> int:
        return len(self._record.episodes)

    @property
    def generation(self) -> int:
        """Commit-record generation: +1 per committed episode."""
        return self._record.generation

    @property
    def num_steps(self) -> int:
        """Total committed steps ``S``."""
        return self._record.committed_end

    @property
    def episode_ends(self) -> np.ndarray:
        """``[N]`` int64 exclusive end row of each episode."""
        return np.asarray(self._record.episode_ends, dtype=np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        """``[N]`` int64 steps per episode."""
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    def episode_ids(self) -> list[str]:
        return [m["id"] for m in self._record.episodes]

    def episode_metadata(self, episode_id: str) -> dict[str, Any]:
        """Metadata of one episode (a copy)."""
        return copy.deepcopy(self._record.episodes[self._index_of(episode_id)])

    def read_episode(self, episode_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Step arrays ``{key: [L, ...]}`` and metadata of one committed episode (copies)."""
        i = self._index_of(episode_id)
        start = self._record.episode_ends[i - 1] if i else 0
        end = self._record.episode_ends[i]
        if self._snapshot is not None and self._snapshot.num_episodes > i:
            steps = {k: v[start:end].copy() for k, v in self._snapshot.arrays.items()}
        else:
            steps = self._read_rows(start, end)
        return steps, copy.deepcopy(self._record.episodes[i])

    def load_arrays(self) -> ReplaySnapshot:
        """In-memory snapshot of all committed episodes (loaded on first call, then cached).

        ``refresh()`` extends it with episodes committed since; the returned object itself
        never changes.
        Under label settings that use labels (``label_settings`` or ``labels/settings.json``)
        rewards and success flags come from each episode's newest label set and metadata gains
        ``labels_version`` / ``awaiting_labels`` (see ``sernf_data.labels.apply_labels``).
        """
        if self._snapshot is None:
            self._extend_snapshot(self._record, self._read_rows(0, self._record.committed_end))
        assert self._snapshot is not None
        # Labels overlay rewards/metadata per call (a new label set shows at the next refresh);
        # the cached snapshot keeps the recorded rewards.
        settings = self.label_settings if self.label_settings is not None else self.labels.settings()
        return labeled_snapshot(self._snapshot, self.labels, settings)

    def refresh(self) -> int:
        """Pick up episodes committed by other processes; returns how many appeared.

        Extends the cached snapshot if one was loaded (reading only the new rows).
        """
        record = self._read_record()
        if record is None:
            raise ReplayCorruptError(self.uri, f"commit record {COMMIT_RECORD_KEY} disappeared")
        return self._adopt(record)

    # -------------------------------------------------------------------------- append

    def append_episode(self, steps: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> str:
        """Validate and commit one complete episode; returns its id.

        ``steps`` maps every spec key (observations, ``action``, ``reward``, ``timestamp``) to
        an array with a shared first (time) axis ``L >= 1``. ``metadata``: ``source`` (one of
        EPISODE_SOURCES), ``terminated`` (bool: the task ended the episode, vs. a time-limit or
        operator truncation), ``success`` (bool; defaults to all subtasks succeeding),
        optional ``subtask_success`` ({name: bool}), ``operator`` (str), ``extra`` (JSON
        dict), ``id`` (str; generated if absent). The keys the store derives (``length``,
        ``return``, ``committed_unix``, see ``DERIVED_METADATA_KEYS``) may be present, so an
        episode read from another store appends as it is.
        """
        if self.mode != "a":
            raise PermissionError(f"replay store {self.uri!r} was opened read-only (mode='r')")
        arrays, length = self._validate_steps(steps)
        meta = self._validate_metadata(metadata, arrays, length)
        with self._loc.writer_lock():
            # Another local writer may have committed since we last looked: start from disk.
            record = self._read_record()
            if record is None:
                raise ReplayCorruptError(self.uri, f"commit record {COMMIT_RECORD_KEY} disappeared")
            self._adopt(record)
            if meta["id"] in {m["id"] for m in self._record.episodes}:
                raise ValueError(f"replay store {self.uri!r}: episode id {meta['id']!r} already exists")
            start = self._record.committed_end
            self._write_rows(start, arrays)
            new = _CommitRecord(
                generation=self._record.generation + 1,
                episode_ends=[*self._record.episode_ends, start + length],
                episodes=[*self._record.episodes, meta],
            )
            self._publish_record(new)  # the commit point
            committed = self._record
            self._record = new
            if self._snapshot is not None and self._snapshot.generation == committed.generation:
                self._extend_snapshot(new, arrays)
            self._sync_mirror()
        return meta["id"]

    # ------------------------------------------------------------------------ internals

    def _index_of(self, episode_id: str) -> int:
        for i, m in enumerate(self._record.episodes):
            if m["id"] == episode_id:
                return i
        raise KeyError(f"replay store {self.uri!r} has no committed episode {episode_id!r}")

    def _spec_for_create(self, spec: StoreSpec | None) -> StoreSpec:
        """Spec to create the store with; refuses to touch anything that is not ours.

        Without a commit record the store never committed an episode (the record is written
        at creation and only ever replaced), so an interrupted creation of *our* store can be
        redone. Anything else at that location is left alone.
        """
        if self._loc.exists("zarr.json"):
            self._group = zarr.open_group(store=self._loc.zarr_store(read_only=False), mode="r+")
            self._check_root_attrs()
            if "meta/episode_ends" in self._group and self._group["meta/episode_ends"].shape[0]:
                raise ReplayCorruptError(
                    self.uri,
                    f"commit record {COMMIT_RECORD_KEY} is missing but meta/episode_ends lists episodes",
                )
            try:
                stored = StoreSpec.from_json(self._group.attrs["spec"])
            except (KeyError, TypeError, ValueError):
                stored = None  # creation stopped before the spec was written
            if stored is not None and spec is not None:
                _compare_specs(self.uri, stored, spec)
            spec = spec or stored
        elif not self._loc.is_empty():
            raise ReplaySchemaError(
                self.uri, "zarr.json", "location exists, is not empty and is not a replay store"
            )
        if spec is None:
            raise ValueError(f"replay store {self.uri!r} does not exist; creating it needs a spec")
        return spec

    def _create(self, spec: StoreSpec) -> None:
        self.spec = spec
        store = self._loc.zarr_store(read_only=False)
        attrs = {
            "format": STORE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "spec": spec.to_json(),
            "episodes": [],
            "generation": 0,
        }
        # Attributes go in with the group's first metadata write: no window without "format".
        self._group = zarr.open_group(store=store, mode="a", zarr_format=3, attributes=attrs)
        if dict(self._group.attrs) != attrs:  # the root existed (redoing an interrupted creation)
            self._group.attrs.update(attrs)
        for name, (shape, dtype) in spec.step_arrays().items():
            row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
            rows = 1 << int(np.clip(np.log2(_TARGET_CHUNK_BYTES / row_bytes), 4, 16))
            self._group.create_array(
                f"data/{name}", shape=(0, *shape), chunks=(rows, *shape), dtype=dtype,
                fill_value=0, overwrite=True,
            )
        self._group.create_array(
            "meta/episode_ends", shape=(0,), chunks=(65536,), dtype="int64", fill_value=0, overwrite=True
        )
        # Record last: until it exists the store is an unfinished creation (see _spec_for_create).
        self._record = _CommitRecord(generation=0)
        self._publish_record(self._record)

    def _check_root_attrs(self) -> None:
        attrs = self._group.attrs
        if attrs.get("format") != STORE_FORMAT:
            raise ReplaySchemaError(
                self.uri, "format", f"root attribute is {attrs.get('format')!r}, not {STORE_FORMAT!r} (not a SERNF replay store?)"
            )

    def _check_schema(self, expected: StoreSpec | None) -> StoreSpec:
        uri, attrs = self.uri, dict(self._group.attrs)
        if "schema_version" not in attrs:
            raise ReplaySchemaError(uri, "schema_version", "missing from the root attributes (not a SERNF replay store?)")
        if attrs["schema_version"] not in SUPPORTED_SCHEMA_VERSIONS:
            raise ReplaySchemaError(
                uri, "schema_version",
                f"store has version {attrs['schema_version']!r}, this code supports {sorted(SUPPORTED_SCHEMA_VERSIONS)}",
            )
        try:
            stored = StoreSpec.from_json(attrs["spec"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplaySchemaError(uri, "spec", f"root attribute is missing or invalid ({exc})") from exc
        if expected is not None:
            _compare_specs(uri, stored, expected)
        for name, (shape, dtype) in stored.step_arrays().items():
            key = f"data/{name}"
            try:
                arr = self._group[key]
            except KeyError:
                raise ReplaySchemaError(uri, key, "array missing from the store") from None
            if not isinstance(arr, zarr.Array) or tuple(arr.shape[1:]) != shape or arr.dtype != dtype:
                found = f"{getattr(arr, 'shape', '?')} {getattr(arr, 'dtype', '?')}"
                raise ReplaySchemaError(uri, key, f"expected [S, *{shape}] {dtype}, found {found}")
        if "meta/episode_ends" not in self._group:
            raise ReplaySchemaError(uri, "meta/episode_ends", "array missing from the store")
        return stored

    def _read_record(self) -> _CommitRecord | None:
        raw = self._loc.read_bytes(COMMIT_RECORD_KEY)
        return None if raw is None else _CommitRecord.from_bytes(self.uri, raw)

    def _publish_record(self, record: _CommitRecord) -> None:
        self._loc.write_atomic(COMMIT_RECORD_KEY, record.to_bytes())

    def _sync_mirror(self) -> None:
        """Bring ``meta/episode_ends`` and root attrs in line with the record (plain-zarr view)."""
        ends = self._group["meta/episode_ends"]
        ends.resize((self.num_episodes,))
        if self.num_episodes:
            ends[:] = self.episode_ends
        self._group.attrs.update({"episodes": self._record.episodes, "generation": self.generation})

    def _adopt(self, record: _CommitRecord) -> int:
        """Make ``record`` current after checking it only extends what we knew; returns #new."""
        old = self._record
        if record.generation == old.generation:
            return 0
        n_old = len(old.episodes)
        if (
            record.generation < old.generation
            or len(record.episodes) < n_old
            or record.episode_ends[:n_old] != old.episode_ends
            or [m["id"] for m in record.episodes[:n_old]] != [m["id"] for m in old.episodes]
        ):
            raise ReplayCorruptError(
                self.uri, "the commit record no longer extends the episodes seen before (store rewritten?)"
            )
        if self._snapshot is not None:
            self._extend_snapshot(record, self._read_rows(old.committed_end, record.committed_end))
        self._record = record
        return len(record.episodes) - n_old

    def _arrays(self) -> dict[str, zarr.Array]:
        # Reopened per use: another process may have resized the arrays since we opened them.
        # Opening the arrays directly reads only their own zarr.json, not the root's mirror.
        store = self._loc.zarr_store(read_only=self.mode == "r")
        mode = "r" if self.mode == "r" else "r+"
        return {
            name: zarr.open_array(store=store, path=f"data/{name}", mode=mode)
            for name in self.spec.step_arrays()
        }

    def _read_rows(self, start: int, end: int) -> dict[str, np.ndarray]:
        out = {}
        for name, arr in self._arrays().items():
            if arr.shape[0] < end:
                raise ReplayCorruptError(
                    self.uri, f"data/{name} has {arr.shape[0]} rows but the commit record ends at {end}"
                )
            out[name] = np.asarray(arr[start:end])
        return out

    def _write_rows(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        length = next(iter(arrays.values())).shape[0]
        for name, arr in self._arrays().items():
            # Exactly start+length: also drops an uncommitted tail a killed writer left.
            arr.resize((start + length, *arr.shape[1:]))
            arr[start : start + length] = arrays[name]  # one batched write per array

    def _extend_snapshot(self, record: _CommitRecord, new_rows: Mapping[str, np.ndarray]) -> None:
        """Append ``new_rows`` (rows ``old_end:record end``) to the in-memory buffers."""
        old_end = self._snapshot.num_steps if self._snapshot is not None else 0
        new_end = record.committed_end
        views = {}
        for name, rows in new_rows.items():
            assert rows.shape[0] == new_end - old_end, (name, rows.shape, old_end, new_end)
            buf = self._buffers.get(name)
            if buf is None or buf.shape[0] < new_end:
                # Grow geometrically (1.5x: image buffers are large, the copy peaks at 2.5x);
                # old snapshots keep pointing at the old buffer.
                cap = max(new_end, (3 * buf.shape[0]) // 2 if buf is not None else 0, 1024)
                grown = np.empty((cap, *rows.shape[1:]), dtype=rows.dtype)
                if buf is not None:
                    grown[:old_end] = buf[:old_end]
                buf = self._buffers[name] = grown
            buf[old_end:new_end] = rows
            view = buf[:new_end]
            view.flags.writeable = False
            views[name] = view
        ends = np.asarray(record.episode_ends, dtype=np.int64)
        ends.flags.writeable = False
        self._snapshot = ReplaySnapshot(
            arrays=views,
            episode_ends=ends,
            episodes=tuple(copy.deepcopy(record.episodes)),
            generation=record.generation,
        )

    def _validate_steps(self, steps: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        uri, expected = self.uri, self.spec.step_arrays()
        if not isinstance(steps, Mapping):
            raise TypeError(f"steps must be a mapping of arrays, got {type(steps).__name__}")
        missing = sorted(set(expected) - set(steps))
        if missing:
            raise ReplaySchemaError(uri, missing[0], f"missing from the episode (missing: {missing})")
        extra = sorted(set(steps) - set(expected))
        if extra:
            raise ReplaySchemaError(uri, extra[0], f"not in the store's spec (unexpected: {extra})")
        out, length = {}, None
        for name, (shape, dtype) in expected.items():
            arr = np.asarray(steps[name])
            if arr.ndim != 1 + len(shape) or tuple(arr.shape[1:]) != shape:
                raise ReplaySchemaError(uri, name, f"expected shape [L, *{shape}], got {arr.shape}")
            if dtype.kind == "f":
                # Floats of another width are cast (sim code often yields float64);
                # an overflow to inf is caught by the finiteness check below.
                if arr.dtype.kind != "f":
                    raise ReplaySchemaError(uri, name, f"expected a float array, got {arr.dtype}")
                arr = np.ascontiguousarray(arr, dtype=dtype)
                if not np.isfinite(arr).all():
                    bad = int(np.argwhere(~np.isfinite(arr))[0][0])
                    raise ReplaySchemaError(uri, name, f"non-finite value (NaN/inf) at step {bad}")
            elif arr.dtype != dtype:
                # Images are never cast: a float image in [0, 1] would silently become black.
                raise ReplaySchemaError(uri, name, f"expected dtype {dtype}, got {arr.dtype}")
            if length is None:
                length = arr.shape[0]
            elif arr.shape[0] != length:
                raise ReplaySchemaError(uri, name, f"has {arr.shape[0]} steps, other arrays have {length}")
            out[name] = np.ascontiguousarray(arr)
        assert length is not None
        if length < 1:
            raise ReplaySchemaError(uri, "action", "episode has no steps")
        if np.any(np.diff(out["timestamp"]) < 0):
            raise ReplaySchemaError(uri, "timestamp", "timestamps go backwards within the episode")
        return out, length

    def _validate_metadata(
        self, metadata: Mapping[str, Any], arrays: Mapping[str, np.ndarray], length: int
    ) -> dict[str, Any]:
        uri = self.uri
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
        unknown = sorted(set(metadata) - _METADATA_KEYS - DERIVED_METADATA_KEYS)
        if unknown:
            raise ReplaySchemaError(
                uri, f"metadata.{unknown[0]}", f"unknown keys {unknown}; free-form data goes under 'extra'"
            )
        if "length" in metadata and metadata["length"] != length:
            raise ReplaySchemaError(
                uri, "metadata.length", f"says {metadata['length']!r} steps, the episode has {length}"
            )
        source = metadata.get("source")
        if source not in EPISODE_SOURCES:
            raise ReplaySchemaError(uri, "metadata.source", f"must be one of {EPISODE_SOURCES}, got {source!r}")
        subtasks = metadata.get("subtask_success", {})
        if not isinstance(subtasks, Mapping) or not all(
            isinstance(k, str) and isinstance(v, bool | np.bool_) for k, v in subtasks.items()
        ):
            raise ReplaySchemaError(uri, "metadata.subtask_success", f"must map names to bools, got {subtasks!r}")
        subtasks = {k: bool(v) for k, v in subtasks.items()}
        if "success" in metadata:
            success = metadata["success"]
            if not isinstance(success, bool | np.bool_):
                raise ReplaySchemaError(uri, "metadata.success", f"must be a bool, got {success!r}")
        elif subtasks:
            success = all(subtasks.values())
        else:
            raise ReplaySchemaError(uri, "metadata.success", "required (or give subtask_success)")
        terminated = metadata.get("terminated")
        if not isinstance(terminated, bool | np.bool_):
            # No default on purpose: terminal vs. time-limit truncation changes every TD target.
            raise ReplaySchemaError(uri, "metadata.terminated", f"required bool, got {terminated!r}")
        operator = metadata.get("operator")
        if operator is not None and not isinstance(operator, str):
            raise ReplaySchemaError(uri, "metadata.operator", f"must be a string, got {operator!r}")
        extra = metadata.get("extra", {})
        try:
            if not isinstance(extra, Mapping):
                raise TypeError("not a mapping")
            extra = json.loads(json.dumps(extra))
        except (TypeError, ValueError) as exc:
            raise ReplaySchemaError(uri, "metadata.extra", f"must be a JSON-serializable dict ({exc})") from exc
        episode_id = metadata.get("id")
        if episode_id is None:
            episode_id = f"{source}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        elif not isinstance(episode_id, str) or not _ID_RE.match(episode_id):
            raise ReplaySchemaError(uri, "metadata.id", f"must match {_ID_RE.pattern}, got {episode_id!r}")
        return {
            "id": episode_id,
            "source": source,
            "success": bool(success),
            "subtask_success": subtasks,
            "terminated": bool(terminated),
            "operator": operator,
            "extra": extra,
            "length": int(length),
            "return": float(arrays["reward"].astype(np.float64).sum()),
            "committed_unix": time.time(),
        }


def _compare_specs(uri: str, stored: StoreSpec, expected: StoreSpec) -> None:
    """Raise naming the first field where the store's spec differs from the expected one."""
    for name in expected.obs:
        if name not in stored.obs:
            raise ReplaySchemaError(uri, f"data/{name}", "observation key expected but not in the store")
        if stored.obs[name] != expected.obs[name]:
            raise ReplaySchemaError(
                uri, f"data/{name}", f"store has {stored.obs[name]}, expected {expected.obs[name]}"
            )
    for name in stored.obs:
        if name not in expected.obs:
            raise ReplaySchemaError(uri, f"data/{name}", "observation key in the store but not expected")
    if stored.action_dim != expected.action_dim:
        raise ReplaySchemaError(
            uri, "action_dim", f"store has {stored.action_dim}, expected {expected.action_dim}"
        )
    if stored.control_rate_hz != expected.control_rate_hz:
        raise ReplaySchemaError(
            uri, "control_rate_hz", f"store has {stored.control_rate_hz}, expected {expected.control_rate_hz}"
        )
