"""Announced episodes → the learner's own online store: validation, ingestion, journal.

Stage IV (paper §IV-D d) trains on batches that mix offline demonstrations with the episodes
the robot collects online. On the robot those episodes arrive as announcements on
``/sernf/replay`` (docs/design.md §4: "whatever arrives on a topic is untrusted"). This module is the
pure core behind learner_node (no rclpy, no message types):

* :class:`ReplayLocations` decides *where* an announced store may live: under the configured
  replay root (after resolving ``..`` and symlinks, so ``root/../../etc`` or a symlink that
  points out of the root are refused) or behind an allowed URL prefix (an actor on another
  machine writing to an object store).
* :class:`ReplayIngestor` validates an :class:`Announcement` against the store itself (the
  store opens, its schema matches the learner's, the episode id is *committed* — a half-written
  episode is not in the commit record, see :mod:`sernf_data.store` — and ``num_steps``
  equals the stored length) and copies the episode into the learner's own online
  :class:`~sernf_data.store.EpisodeStore`. Copying keeps remote actors working (the
  sampler reads one local store) and makes "nothing ingested" observable: a rejected
  announcement leaves the online store exactly as it was (``append_episode`` validates
  before it writes). Every refusal raises :class:`ReplayRejected` with a reason code.
* :class:`Journal` is an append-only JSON-lines file: an announcement accepted into the
  learner's queue is written (and fsynced) *before* it is queued, so a learner killed with
  announcements in its queue, or in the middle of training on them, finds them again at the
  next start (:meth:`Journal.pending`) and processes them; terminal records (``rejected``,
  ``done``) retire entries.

Ingestion is idempotent: the learner's copy carries its provenance (``extra.ingest``), so an
episode announced twice, or re-processed after a crash between the copy and the end of its
training round, is recognised and not copied again.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sernf_data.store import EpisodeStore, StoreSpec

__all__ = [
    "REJECT_REASONS",
    "Announcement",
    "IngestResult",
    "Journal",
    "JournalEntry",
    "ReplayIngestor",
    "ReplayLocations",
    "ReplayRejected",
    "spec_mismatch",
]

#: Reason codes of :class:`ReplayRejected` (counted per code in the node's diagnostics).
REJECT_REASONS = (
    "announcement",  # the message itself is malformed (empty id, bad characters, 0 steps)
    "location",  # outside the replay root / not behind an allowed URL prefix / our own store
    "store",  # no replay store there, or it cannot be opened / is corrupt
    "schema",  # observation spec, action dim or control rate differ from the learner's
    "episode",  # no *committed* episode with that id (unknown, or written but not committed)
    "length",  # num_steps differs from the stored episode length
    "duplicate",  # an episode with that id was already ingested from another store
    "data",  # the episode's arrays cannot be read or fail validation (NaN, dtypes, ...)
    "signature",  # a replay key is configured and the announcement is unsigned or wrongly signed
)

# The replay store's own id rule (sernf_data.store): an id we cannot store is refused up
# front, before it reaches the journal.
_EPISODE_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
_MAX_URI_LENGTH = 4096
# Provenance key in the copied episode's metadata["extra"].
_INGEST_KEY = "ingest"


class ReplayRejected(ValueError):
    """An announcement was refused; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


# ----------------------------------------------------------------------------- announcement


@dataclass(frozen=True)
class Announcement:
    """What a ReplayEpisode message claims (untrusted until :meth:`ReplayIngestor.ingest`)."""

    episode_id: str
    """Store-unique id of the episode."""
    uri: str
    """Replay store holding it: a path or an fsspec URL."""
    num_steps: int
    """Claimed number of control steps (must equal the stored length)."""
    source: str = ""
    """Claimed source ("demo", "online", "distill"); the store's metadata is what is kept."""
    episode_return: float = 0.0
    """Claimed undiscounted return (informational)."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not math.isfinite(self.episode_return):
            data["episode_return"] = None  # JSON has no NaN
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Announcement:
        ret = data.get("episode_return")
        return cls(
            episode_id=str(data["episode_id"]),
            uri=str(data["uri"]),
            num_steps=int(data["num_steps"]),
            source=str(data.get("source", "")),
            episode_return=float("nan") if ret is None else float(ret),
        )


def check_announcement_fields(ann: Announcement) -> None:
    """Syntactic checks of the message fields; raises :class:`ReplayRejected` ("announcement")."""
    if not isinstance(ann.episode_id, str) or not _EPISODE_ID_RE.match(ann.episode_id):
        raise ReplayRejected("announcement", f"episode id {ann.episode_id!r} must match {_EPISODE_ID_RE.pattern}")
    if isinstance(ann.num_steps, bool) or not isinstance(ann.num_steps, int) or ann.num_steps < 1:
        raise ReplayRejected("announcement", f"num_steps must be >= 1, got {ann.num_steps!r}")
    if not isinstance(ann.uri, str) or not ann.uri.strip():
        raise ReplayRejected("announcement", "empty uri")
    if len(ann.uri) > _MAX_URI_LENGTH or "\x00" in ann.uri:
        raise ReplayRejected("announcement", "uri too long or contains NUL")


# -------------------------------------------------------------------------------- locations


def _is_url(uri: str) -> bool:
    # The replay store's rule (replay._Location): local unless it has a scheme; file:// is local.
    return "://" in uri and not uri.startswith("file://")


@dataclass(frozen=True)
class ReplayLocations:
    """Where announced replay stores may live.

    Local paths are resolved (relative to the learner's working directory, ``~`` expanded
    as the store itself would, ``..`` and symlinks resolved) and must then lie inside
    ``replay_root``; URLs must start with one of ``allowed_url_prefixes`` at a path boundary
    and contain no ``.``/``..`` segments (also percent-encoded). Anything inside one of
    ``forbidden`` (the learner's own output directory) is refused: copying the learner's own
    online store into itself would be a loop.
    """

    replay_root: str = ""
    """Directory under which local replay stores must lie; empty: no local store accepted."""
    allowed_url_prefixes: tuple[str, ...] = ()
    """URL prefixes (e.g. ``s3://bucket/replay/``) whose stores are accepted."""
    forbidden: tuple[str, ...] = ()
    """Local directories no announced store may lie in (the learner's output directory)."""
    _root: str = field(init=False, repr=False, default="")
    _forbidden: tuple[str, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_url_prefixes", tuple(self.allowed_url_prefixes))
        object.__setattr__(self, "forbidden", tuple(self.forbidden))
        for prefix in self.allowed_url_prefixes:
            if not _is_url(prefix):
                raise ValueError(f"allowed_url_prefixes: {prefix!r} is not a URL (scheme://...)")
            if _has_dot_segments(prefix.split("://", 1)[1]):
                raise ValueError(f"allowed_url_prefixes: {prefix!r} contains '.' or '..' segments")
        root = os.path.realpath(os.path.expanduser(self.replay_root)) if self.replay_root else ""
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_forbidden", tuple(os.path.realpath(os.path.expanduser(p)) for p in self.forbidden))

    def resolve(self, uri: str) -> str:
        """The location to open for ``uri`` (resolved real path, or the URL unchanged);
        raises :class:`ReplayRejected` ("location") if it is not an accepted place."""
        if _is_url(uri):
            return self._check_url(uri)
        path = os.path.expanduser(uri.removeprefix("file://"))
        real = os.path.realpath(os.path.abspath(path))  # resolves "..", then every symlink
        if not self._root:
            raise ReplayRejected("location", f"{uri!r}: local stores are not accepted (no replay_root configured)")
        if not _inside(real, self._root):
            raise ReplayRejected(
                "location", f"{uri!r} resolves to {real}, outside the replay root {self._root}")
        for bad in self._forbidden:
            if _inside(real, bad):
                raise ReplayRejected("location", f"{uri!r} lies in the learner's own directory {bad}")
        return real

    def _check_url(self, uri: str) -> str:
        rest = uri.split("://", 1)[1]
        if "\\" in uri or _has_dot_segments(rest):
            raise ReplayRejected("location", f"{uri!r}: '.'/'..' segments or backslashes are not accepted in URLs")
        for prefix in self.allowed_url_prefixes:
            base = prefix.rstrip("/")
            if uri == base or uri.startswith(base + "/"):
                return uri
        allowed = list(self.allowed_url_prefixes) or "none configured"
        raise ReplayRejected("location", f"{uri!r} is not under an allowed URL prefix ({allowed})")


def _has_dot_segments(path: str) -> bool:
    # Percent-decoded twice: "%252e%252e" must not slip through a backend that decodes again.
    decoded = urllib.parse.unquote(urllib.parse.unquote(path))
    return any(seg in (".", "..") for seg in re.split(r"[/\\]", decoded))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# -------------------------------------------------------------------------------- ingestion


def spec_mismatch(found: StoreSpec, expected: StoreSpec) -> str:
    """Human-readable differences between two store specs ('' when equal)."""
    problems = []
    for key in sorted(set(expected.obs) - set(found.obs)):
        problems.append(f"observation {key!r} missing")
    for key in sorted(set(found.obs) - set(expected.obs)):
        problems.append(f"unexpected observation {key!r}")
    for key in sorted(set(found.obs) & set(expected.obs)):
        if found.obs[key] != expected.obs[key]:
            f, e = found.obs[key], expected.obs[key]
            problems.append(f"observation {key!r} is {f.kind} {list(f.shape)}, expected {e.kind} {list(e.shape)}")
    if found.action_dim != expected.action_dim:
        problems.append(f"action dim {found.action_dim}, expected {expected.action_dim}")
    if found.control_rate_hz != expected.control_rate_hz:
        problems.append(f"control rate {found.control_rate_hz:g} Hz, expected {expected.control_rate_hz:g} Hz")
    return "; ".join(problems)


@dataclass(frozen=True)
class IngestResult:
    """An episode now in the learner's online store."""

    episode_id: str
    """Its id (the same in the actor's and the learner's store)."""
    source_uri: str
    """The resolved location it was copied from."""
    num_steps: int
    """Steps copied."""
    episode_return: float
    """Undiscounted return of the stored rewards."""
    success: bool
    """The episode's success label."""
    already_present: bool
    """True if this very episode had been copied before (re-announced / re-processed)."""


class ReplayIngestor:
    """Validates announcements and copies their episodes into the learner's online store.

    Args:
        online_store: the learner's own store, opened with ``mode="a"``; only this object
            writes to it (one writer, docs/design.md §5). Not thread-safe: use from one thread.
        expected_spec: the schema every ingested store must have (the learner's offline
            store, which was checked against the policy: observation spec and action dim).
        locations: where announced stores may live.
        storage_options: fsspec options for URL stores (credentials come from the
            environment, never from announcements).
    """

    def __init__(
        self,
        online_store: EpisodeStore,
        expected_spec: StoreSpec,
        locations: ReplayLocations,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if online_store.mode != "a":
            raise ValueError("the learner's online store must be opened with mode='a'")
        problem = spec_mismatch(online_store.spec, expected_spec)
        if problem:
            raise ValueError(f"online store {online_store.uri!r} does not match the learner's schema: {problem}")
        self.online = online_store
        self.expected_spec = expected_spec
        self.locations = locations
        self.storage_options = dict(storage_options or {})

    def check(self, ann: Announcement) -> Announcement:
        """Cheap checks (fields, location; no store access): the announcement with its uri
        resolved. Raises :class:`ReplayRejected`."""
        check_announcement_fields(ann)
        return Announcement(ann.episode_id, self.locations.resolve(ann.uri), ann.num_steps,
                            ann.source, ann.episode_return)

    def ingest(self, ann: Announcement) -> IngestResult:
        """Validate ``ann`` against its store and copy the episode into the online store.

        Raises :class:`ReplayRejected` (the online store is then unchanged). Other
        exceptions (e.g. ``OSError`` writing the learner's own store) are the learner's
        problems, not the announcement's, and propagate.
        """
        ann = self.check(ann)
        uri = ann.uri
        store = self._open(uri)
        problem = spec_mismatch(store.spec, self.expected_spec)
        if problem:
            raise ReplayRejected("schema", f"store {uri!r}: {problem}")
        try:
            meta = store.episode_metadata(ann.episode_id)
        except KeyError:
            raise ReplayRejected(
                "episode", f"store {uri!r} has no committed episode {ann.episode_id!r} "
                f"(unknown id, or written but not committed)") from None
        if meta["length"] != ann.num_steps:
            raise ReplayRejected(
                "length", f"episode {ann.episode_id!r} has {meta['length']} steps, announced {ann.num_steps}")
        present = self._already_ingested(ann.episode_id, uri)
        if present is not None:
            return present
        try:
            steps, meta = store.read_episode(ann.episode_id)
        except Exception as exc:  # noqa: BLE001 - untrusted store: any read failure is a rejection
            raise ReplayRejected("data", f"cannot read episode {ann.episode_id!r} from {uri!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        lengths = {k: int(v.shape[0]) for k, v in steps.items()}
        if set(lengths.values()) != {ann.num_steps}:
            raise ReplayRejected("data", f"episode {ann.episode_id!r}: array lengths {lengths}, expected {ann.num_steps}")
        extra = dict(meta.get("extra") or {})
        extra[_INGEST_KEY] = {"uri": uri, "episode_id": ann.episode_id, "unix": time.time()}
        copy_meta = {
            "id": ann.episode_id,
            "source": meta["source"],
            "success": meta["success"],
            "subtask_success": meta["subtask_success"],
            "terminated": meta["terminated"],
            "extra": extra,
        }
        if meta.get("operator") is not None:
            copy_meta["operator"] = meta["operator"]
        try:
            # Validates everything (finite floats, dtypes, monotonic timestamps) before writing.
            self.online.append_episode(steps, copy_meta)
        except (ValueError, TypeError) as exc:
            raise ReplayRejected("data", f"episode {ann.episode_id!r} from {uri!r}: {exc}") from exc
        return IngestResult(ann.episode_id, uri, ann.num_steps, float(steps["reward"].astype("float64").sum()),
                            bool(meta["success"]), already_present=False)

    def _open(self, uri: str) -> EpisodeStore:
        # Opened fresh per announcement: the episode may have been committed after any earlier
        # open, and a store replaced at the same path must be read as it is now.
        try:
            return EpisodeStore(uri, mode="r", storage_options=self.storage_options)
        except FileNotFoundError:
            raise ReplayRejected("store", f"no replay store at {uri!r}") from None
        except Exception as exc:  # noqa: BLE001 - untrusted location: any failure to open is a rejection
            raise ReplayRejected("store", f"cannot open replay store {uri!r}: {type(exc).__name__}: {exc}") from exc

    def _already_ingested(self, episode_id: str, uri: str) -> IngestResult | None:
        """The earlier copy of this episode, None if the id is free; raises for a clash."""
        if episode_id not in set(self.online.episode_ids()):
            return None
        meta = self.online.episode_metadata(episode_id)
        origin = (meta.get("extra") or {}).get(_INGEST_KEY) or {}
        if origin.get("uri") == uri and origin.get("episode_id") == episode_id:
            return IngestResult(episode_id, uri, int(meta["length"]), float(meta["return"]),
                                bool(meta["success"]), already_present=True)
        raise ReplayRejected(
            "duplicate", f"an episode {episode_id!r} was already ingested from {origin.get('uri', '?')!r}; "
            f"ids must be unique across actor stores")


# ---------------------------------------------------------------------------------- journal


@dataclass(frozen=True)
class JournalEntry:
    """One accepted announcement and its sequence number."""

    seq: int
    announcement: Announcement


class Journal:
    """Append-only JSON lines recording the life of every accepted announcement.

    Records (one JSON object per line, appended, flushed and fsynced)::

        {"op": "accepted", "seq": 7, "announcement": {...}, "unix": ...}
        {"op": "ingested", "seq": 7, "uri": "<resolved>", "episode_id": "...", ...}
        {"op": "rejected", "seq": 7, "reason": "length", "detail": "..."}      terminal
        {"op": "done",     "seq": 7, "step": 1234, "checkpoint": "..."}        terminal

    ``accepted`` is written *before* the announcement is queued; ``done`` after the checkpoint
    of the training round that used the episode was saved. An entry without a terminal record
    is *pending*: it is re-validated and processed again after a restart. A record torn by a
    kill mid-write (no final newline) is dropped when the journal is opened: the announcement
    it described was never acknowledged as queued. Thread-safe.
    """

    TERMINAL = ("rejected", "done")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._accepted: dict[int, Announcement] = {}
        self._terminal: dict[int, str] = {}
        self._ingested: dict[int, tuple[str, str]] = {}
        self._records = 0
        self._load()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            # A kill mid-append left a partial last record: cut it so the next append starts
            # on a fresh line (otherwise it would be glued to the garbage and lost too).
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
            raw = raw[:end]
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                seq, op = int(record["seq"]), record["op"]
                if op == "accepted":
                    self._accepted[seq] = Announcement.from_json(record["announcement"])
                else:
                    self._note(seq, op, record)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path}:{lineno}: unreadable journal record ({exc}): {line[:200]!r}") from exc
            self._records += 1

    @property
    def next_seq(self) -> int:
        with self._lock:
            return max(self._accepted, default=-1) + 1

    def _append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._records += 1

    def accept(self, ann: Announcement, via: str = "announcement") -> int:
        """Record an accepted announcement durably; returns its sequence number. ``via``: how
        the learner learnt of the episode ("announcement", or "reconcile" for one found in a
        watched store)."""
        with self._lock:
            seq = max(self._accepted, default=-1) + 1
            self._append({"op": "accepted", "seq": seq, "announcement": ann.to_json(), "via": via,
                          "unix": time.time()})
            self._accepted[seq] = ann
            return seq

    def mark(self, seq: int, op: str, **info: Any) -> None:
        """Append ``op`` ("ingested", "rejected", "done") for entry ``seq``."""
        if op not in ("ingested", *self.TERMINAL):
            raise ValueError(f"unknown journal op {op!r}")
        with self._lock:
            if seq not in self._accepted:
                raise KeyError(f"journal has no accepted entry {seq}")
            record = {"op": op, "seq": seq, **info, "unix": time.time()}
            self._append(record)
            self._note(seq, op, record)

    def _note(self, seq: int, op: str, record: Mapping[str, Any]) -> None:
        if op in self.TERMINAL:
            self._terminal[seq] = op
        elif op == "ingested" and "uri" in record and "episode_id" in record:
            self._ingested[seq] = (str(record["uri"]), str(record["episode_id"]))

    def ingested_episode(self, seq: int) -> tuple[str, str] | None:
        """(resolved store uri, episode id) that entry ``seq`` was ingested as, if recorded."""
        with self._lock:
            return self._ingested.get(seq)

    def status(self, seq: int) -> str:
        """"pending", "rejected" or "done"."""
        with self._lock:
            return self._terminal.get(seq, "pending")

    def pending(self, done: Iterable[int] = ()) -> list[JournalEntry]:
        """Accepted entries without a terminal record and not in ``done`` (e.g. the seqs a
        checkpoint says were trained on), in acceptance order."""
        skip = set(done)
        with self._lock:
            return [JournalEntry(seq, ann) for seq, ann in sorted(self._accepted.items())
                    if seq not in self._terminal and seq not in skip]

    def counts(self) -> dict[str, int]:
        with self._lock:
            terminal = list(self._terminal.values())
            return {"accepted": len(self._accepted), "rejected": terminal.count("rejected"),
                    "done": terminal.count("done"), "records": self._records}

    def close(self) -> None:
        with self._lock:
            self._fh.close()
