"""Rokoko Studio Live receiver: UDP datagrams → validated hand frames of one actor.

Protocol (Studio Live "Custom" streaming target, JSON v3): one UDP datagram per frame (~60 fps),
either plain UTF-8 JSON or that JSON as one LZ4 *frame* (recognised by the LZ4 frame magic
``04 22 4D 18``; Studio's "JSON LZ4" option). The v3 layout we read::

    {"version": 3, "fps": 60,
     "scene": {"timestamp": <s>, "props": [...],
               "actors": [{"name": ..., "meta": {"hasGloves", "hasLeftGlove", "hasRightGlove",
                                               "hasBody", ...},
                           "dimensions": {...},
                           "body": {<bone>: {"position": {x, y, z}, "rotation": {x, y, z, w}}}}]}}

Y-up, left-handed, metres (see ``frames``). Finger bones are
``{left,right}{Thumb,Index,Middle,Ring,Little}{Proximal,Medial,Distal,Tip}``, the wrist is
``{left,right}Hand``. Studio 1's "JSON v2.5" also says version 3 but carries top-level
``trackers`` / ``actors`` (the v2 layout, no glove meta): we **reject** it with the reason
``v2_layout`` rather than guess at its hand data; choose JSON v3 in Studio.

Nothing from the network is trusted: every packet is size-checked before and after
decompression, parsed, and validated field by field; a bad one is dropped and counted under
its reason (``DROP_REASONS``), never raised out of the receiver thread.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import lz4.frame
import numpy as np

from teleop_rokoko.frames import (
    quat_xyzw_to_matrix,
    studio_position_to_world,
    studio_rotation_to_world,
)

__all__ = [
    "DROP_REASONS",
    "FINGERS",
    "LZ4_FRAME_MAGIC",
    "PHALANGES",
    "ActorFrame",
    "BonePose",
    "PacketError",
    "StudioLiveReceiver",
    "hand_bone_names",
    "parse_packet",
]

LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
FINGERS = ("Thumb", "Index", "Middle", "Ring", "Little")
PHALANGES = ("Proximal", "Medial", "Distal", "Tip")

DROP_REASONS = (
    "empty",          # zero-length datagram
    "oversized",      # datagram or decompressed payload above max_packet_bytes
    "lz4",            # LZ4 frame magic but not a complete, valid LZ4 frame (e.g. truncated)
    "encoding",       # not UTF-8
    "json",           # not JSON (malformed or truncated)
    "version",        # no version, or a major version other than 3
    "v2_layout",      # says v3 but has the older top-level trackers/actors layout
    "schema",         # v3 but a field is missing, of the wrong type or not finite
    "actor_missing",  # valid packet without the chosen actor
    "internal",       # a bug in this module; logged with the traceback, the thread lives on
)
"""Why a datagram was dropped (the keys of ``StudioLiveReceiver.drops``)."""


class PacketError(ValueError):
    """A datagram that is not a usable Studio Live v3 packet; ``reason`` ∈ DROP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def hand_bone_names(side: str) -> tuple[str, ...]:
    """The wrist and the 20 finger bones of one hand (``side`` is 'left' or 'right')."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return (f"{side}Hand", *(f"{side}{f}{p}" for f in FINGERS for p in PHALANGES))


@dataclass(frozen=True)
class BonePose:
    """One bone in the glove world frame (right-handed, Z-up, metres; see ``frames``)."""

    position: np.ndarray
    """[3] position of the bone's head."""
    rotation: np.ndarray
    """[3, 3] rotation of the bone's frame."""


@dataclass(frozen=True)
class ActorFrame:
    """The chosen actor in one validated packet."""

    name: str
    timestamp: float
    """Studio's scene timestamp (s)."""
    fps: float
    has_left_glove: bool
    has_right_glove: bool
    bones: dict[str, BonePose] = field(repr=False)
    """The wrists and finger bones present in the packet (glove world frame)."""

    def has_glove(self, side: str) -> bool:
        return self.has_right_glove if side == "right" else self.has_left_glove

    def hand(self, side: str) -> dict[str, BonePose] | None:
        """All 21 bones of one hand, or None when that glove is absent or incomplete."""
        if not self.has_glove(side):
            return None
        names = hand_bone_names(side)
        if not all(n in self.bones for n in names):
            return None
        return {n: self.bones[n] for n in names}


def _decode(datagram: bytes, max_bytes: int) -> str:
    if not datagram:
        raise PacketError("empty")
    if len(datagram) > max_bytes:
        raise PacketError("oversized", f"{len(datagram)} bytes > {max_bytes}")
    payload = datagram
    if datagram[:4] == LZ4_FRAME_MAGIC:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        try:
            # max_length bounds the output: a small datagram cannot inflate into a huge buffer.
            payload = decompressor.decompress(datagram, max_length=max_bytes + 1)
        except RuntimeError as exc:  # lz4 raises RuntimeError on corrupt frames
            raise PacketError("lz4", str(exc)) from exc
        if len(payload) > max_bytes:
            raise PacketError("oversized", f"decompressed payload > {max_bytes} bytes")
        if not decompressor.eof:
            raise PacketError("lz4", "incomplete LZ4 frame")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PacketError("encoding", str(exc)) from exc


def _major_version(value: object) -> int:
    # Studio writes an integer; tolerate 3.0 or "3" / "3.0" / "3,0" as the Blender plug-in does.
    if isinstance(value, bool):
        raise PacketError("version", f"version {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        head = value.replace(",", ".").split(".")[0].strip()
        if head.isdigit():
            return int(head)
    raise PacketError("version", f"version {value!r}")


def _number(obj: dict, key: str, where: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PacketError("schema", f"{where}.{key} is not a finite number")
    return float(value)


def _bone(raw: object, where: str) -> BonePose:
    if not isinstance(raw, dict):
        raise PacketError("schema", f"{where} is not an object")
    pos, rot = raw.get("position"), raw.get("rotation")
    if not isinstance(pos, dict) or not isinstance(rot, dict):
        raise PacketError("schema", f"{where} needs position and rotation objects")
    p = np.array([_number(pos, k, f"{where}.position") for k in "xyz"])
    q = np.array([_number(rot, k, f"{where}.rotation") for k in "xyzw"])
    norm = float(np.linalg.norm(q))
    if not 0.5 < norm < 1.5:  # Studio sends unit quaternions; far off means garbage
        raise PacketError("schema", f"{where}.rotation is not a unit quaternion (|q| = {norm:.3g})")
    return BonePose(studio_position_to_world(p), studio_rotation_to_world(quat_xyzw_to_matrix(q)))


_WANTED_BONES = frozenset(hand_bone_names("left") + hand_bone_names("right"))


def parse_packet(datagram: bytes, actor_name: str = "", max_bytes: int = 65536) -> ActorFrame:
    """One datagram → the chosen actor's frame (``actor_name`` empty: the first actor).

    Raises PacketError (with its ``reason``) for anything that is not a usable v3 packet.
    """
    text = _decode(datagram, max_bytes)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PacketError("json", str(exc)[:120]) from exc
    if not isinstance(data, dict):
        raise PacketError("json", "top level is not an object")
    if "version" not in data:
        raise PacketError("version", "no version field")
    if _major_version(data["version"]) != 3:
        raise PacketError("version", f"version {data['version']!r}, need 3")
    if "trackers" in data:
        raise PacketError("v2_layout", "v3 with top-level trackers (Studio 1 JSON v2.5)")
    scene = data.get("scene")
    if not isinstance(scene, dict):
        raise PacketError("schema", "no scene object")
    actors = scene.get("actors")
    if not isinstance(actors, list):
        raise PacketError("schema", "scene.actors is not a list")
    timestamp = _number(scene, "timestamp", "scene")
    fps = _number(data, "fps", "packet") if "fps" in data else 0.0
    chosen = None
    for actor in actors:
        if not isinstance(actor, dict) or not isinstance(actor.get("name"), str):
            raise PacketError("schema", "an actor without a name")
        if not actor_name or actor["name"] == actor_name:
            chosen = actor
            break
    if chosen is None:
        raise PacketError("actor_missing", f"no actor named {actor_name!r}")
    meta = chosen.get("meta")
    body = chosen.get("body")
    if not isinstance(meta, dict) or not isinstance(body, dict):
        raise PacketError("schema", f"actor {chosen['name']!r} needs meta and body objects")
    flags = {}
    for key in ("hasGloves", "hasLeftGlove", "hasRightGlove"):
        value = meta.get(key, False)
        if not isinstance(value, bool):
            raise PacketError("schema", f"meta.{key} is not a boolean")
        flags[key] = value
    bones = {name: _bone(raw, f"body.{name}") for name, raw in body.items() if name in _WANTED_BONES}
    return ActorFrame(
        name=chosen["name"], timestamp=timestamp, fps=fps,
        has_left_glove=flags["hasGloves"] and flags["hasLeftGlove"],
        has_right_glove=flags["hasGloves"] and flags["hasRightGlove"],
        bones=bones,
    )


class StudioLiveReceiver:
    """A UDP socket and its reader thread, keeping the newest valid frame of one actor.

    ``latest()`` returns the newest frame and its age on the monotonic clock; a consumer that
    falls behind sees the newest pose, never a queue of old ones. Drops are counted by reason.
    """

    def __init__(self, port: int = 14043, host: str = "0.0.0.0", actor_name: str = "",
                 max_packet_bytes: int = 65536, logger: logging.Logger | None = None):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if max_packet_bytes < 256:
            raise ValueError(f"max_packet_bytes must be >= 256, got {max_packet_bytes}")
        self.actor_name = actor_name
        self.max_packet_bytes = max_packet_bytes
        self.log = logger or logging.getLogger("teleop_rokoko.studio_live")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.05)  # lets the thread notice stop() promptly
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._latest: ActorFrame | None = None
        self._latest_at = -math.inf
        self.received = 0
        self.accepted = 0
        self.drops: Counter[str] = Counter()
        self._last_drop_log = -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="studio-live-rx", daemon=True)

    def start(self) -> StudioLiveReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._sock.close()

    def latest(self) -> tuple[ActorFrame | None, float]:
        """The newest valid frame and its age (s) on the monotonic clock (inf when none yet)."""
        with self._lock:
            return self._latest, time.monotonic() - self._latest_at

    def counts(self) -> dict[str, int]:
        """Datagrams received / accepted and drops by reason (a snapshot)."""
        with self._lock:
            return {"received": self.received, "accepted": self.accepted,
                    **{f"dropped_{r}": self.drops.get(r, 0) for r in DROP_REASONS}}

    def handle_datagram(self, datagram: bytes) -> ActorFrame | None:
        """Parse one datagram and keep it if valid (the thread's body; public for tests)."""
        try:
            frame = parse_packet(datagram, self.actor_name, self.max_packet_bytes)
        except PacketError as exc:
            self._count_drop(exc.reason, str(exc))
            return None
        except Exception:  # noqa: BLE001 - the network thread must outlive any packet; counted and logged
            self.log.exception("internal error while parsing a Studio Live packet (dropped)")
            self._count_drop("internal", "see traceback")
            return None
        with self._lock:
            self.received += 1
            self.accepted += 1
            self._latest = frame
            self._latest_at = time.monotonic()
        return frame

    def _count_drop(self, reason: str, detail: str) -> None:
        with self._lock:
            self.received += 1
            self.drops[reason] += 1
            now = time.monotonic()
            log_now = now - self._last_drop_log > 2.0  # rate-limited: a flood must not flood the log
            if log_now:
                self._last_drop_log = now
        if log_now:
            self.log.warning(f"dropped Studio Live packet ({detail}); drops so far: {dict(self.drops)}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # One byte more than allowed: a datagram that fills the buffer is oversized (the
                # kernel truncates longer ones silently).
                datagram = self._sock.recv(self.max_packet_bytes + 1)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                self.log.warning(f"Studio Live socket error: {exc}")
                time.sleep(0.05)
                continue
            self.handle_datagram(datagram)
