"""Rokoko Studio Live stand-in: a UDP sender of Studio Live JSON v3 packets (the glove boundary).

On the robot, Rokoko Studio streams the actor (Smart Gloves + Coil Pro) to UDP port 14043,
one datagram per frame at ~60 fps, JSON v3, optionally LZ4-frame compressed. This module sends
the same datagrams from

* a **synthetic actor**: a human hand skeleton (bone lengths of an adult hand) posed by scripted
  motions (``open``, ``fist``, ``pinch``, ``cycle`` through the three, wrist ``circles``, and
  ``demo`` = cycle + circles); every bone carries the position of its head and the rotation of
  its frame, computed by forward kinematics, so positions and rotations agree as in Studio; or
* a **recording**: a JSON-lines file with one packet per line (``--replay``), e.g. written by
  ``--write-jsonl`` or captured from Studio.

Device failures on request: random dropouts (``--drop-prob``), silent periods (``--silence
START:DURATION``), and malformed datagrams every N frames (``--malformed-every``: truncated
JSON, garbage, wrong version, truncated LZ4, oversized, the older v2 layout).

Coordinates: the skeleton is built in a right-handed Z-up room frame (x = the actor's facing
direction) and written in Studio's left-handed Y-up frame: (x, y, z)_studio = (-y, z, x)_room.

    python -m sernf_sim.studio_live_sender --script demo --port 14043 --lz4
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lz4.frame
import numpy as np

__all__ = [
    "HandPose",
    "StudioLiveSender",
    "hand_bones",
    "hand_pose",
    "make_packet",
    "malformed_datagram",
    "script_frame",
]

FINGERS = ("Thumb", "Index", "Middle", "Ring", "Little")
SCRIPTS = ("open", "fist", "pinch", "cycle", "circles", "demo")
MALFORMED_KINDS = ("truncated_json", "garbage", "wrong_version", "truncated_lz4", "oversized", "v2_layout")

# Room frame → Studio frame (a reflection: Studio is left-handed, Y up).
_ROOM_TO_STUDIO = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

# Adult hand, metres, in the hand frame (x: wrist → middle knuckle, y: thumb side, z: back of
# the right hand). Finger knuckles (MCP) and phalanx lengths (proximal, middle, distal).
_FINGER_MCP = {"Index": (0.088, 0.024, 0.0), "Middle": (0.092, 0.0, 0.0),
               "Ring": (0.086, -0.019, 0.0), "Little": (0.078, -0.037, 0.0)}
_FINGER_LENGTHS = {"Index": (0.043, 0.025, 0.021), "Middle": (0.047, 0.029, 0.023),
                   "Ring": (0.044, 0.028, 0.022), "Little": (0.035, 0.020, 0.019)}
_THUMB_CMC = (0.025, 0.022, -0.012)
_THUMB_LENGTHS = (0.045, 0.032, 0.028)  # metacarpal, proximal, distal phalanx


def _rot(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    c, s, t = math.cos(angle), math.sin(angle), 1.0 - math.cos(angle)
    return np.array([[c + x * x * t, x * y * t - z * s, x * z * t + y * s],
                     [y * x * t + z * s, c + y * y * t, y * z * t - x * s],
                     [z * x * t - y * s, z * y * t + x * s, c + z * z * t]])


_THUMB_REST = _rot((0, 0, 1), math.radians(40.0)) @ _rot((1, 0, 0), math.radians(-60.0))


def _quat_xyzw(m: np.ndarray) -> np.ndarray:
    w = math.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2.0
    x = math.copysign(math.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2.0, m[2, 1] - m[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2.0, m[0, 2] - m[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2.0, m[1, 0] - m[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


@dataclass(frozen=True)
class HandPose:
    """Joint angles of a human hand (rad). Flexion > 0 curls towards the palm."""

    finger_flex: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0),) * 4
    """(MCP, PIP, DIP) flexion of index, middle, ring, little."""
    finger_spread: tuple[float, ...] = (0.05, 0.0, -0.05, -0.1)
    """Abduction of index, middle, ring, little (towards the thumb side > 0)."""
    thumb: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Thumb: opposition (swing under the palm), palmar abduction, MCP flexion, IP flexion."""

    def blend(self, other: HandPose, w: float) -> HandPose:
        """(1 - w)·self + w·other, joint by joint."""
        a, b = self.vector(), other.vector()
        return HandPose.from_vector((1.0 - w) * a + w * b)

    def vector(self) -> np.ndarray:
        return np.concatenate([np.ravel(self.finger_flex), self.finger_spread, self.thumb])

    @staticmethod
    def from_vector(v: np.ndarray) -> HandPose:
        v = np.asarray(v, dtype=np.float64)
        return HandPose(tuple(tuple(v[3 * i:3 * i + 3]) for i in range(4)), tuple(v[12:16]), tuple(v[16:20]))


def hand_bones(pose: HandPose, wrist_pos: np.ndarray, wrist_rot: np.ndarray,
               side: str = "right") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bones of one hand in the room frame: name → (head position [3], frame rotation [3, 3]).

    A left hand is the mirror image of the right one (y of the hand frame negated).
    """
    mirror = np.diag([1.0, -1.0, 1.0]) if side == "left" else np.eye(3)

    def place(p_local: np.ndarray, r_local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (wrist_pos + wrist_rot @ (mirror @ p_local),
                wrist_rot @ (mirror @ r_local @ mirror))

    bones = {f"{side}Hand": place(np.zeros(3), np.eye(3))}
    for k, finger in enumerate(FINGERS[1:]):
        mcp, pip, dip = pose.finger_flex[k]
        rot = _rot((0, 0, 1), pose.finger_spread[k])
        p = np.array(_FINGER_MCP[finger])
        for phalanx, angle, length in zip(("Proximal", "Medial", "Distal"), (mcp, pip, dip),
                                          _FINGER_LENGTHS[finger], strict=True):
            rot = rot @ _rot((0, 1, 0), angle)
            bones[f"{side}{finger}{phalanx}"] = place(p, rot)
            p = p + rot @ np.array([length, 0.0, 0.0])
        bones[f"{side}{finger}Tip"] = place(p, rot)
    opp, abd, mcp, ip = pose.thumb
    rot = _rot((-1, 0, 0), opp) @ _THUMB_REST @ _rot((0, 0, 1), abd)
    p = np.array(_THUMB_CMC)
    for phalanx, angle, length in zip(("Proximal", "Medial", "Distal"), (0.0, mcp, ip),
                                      _THUMB_LENGTHS, strict=True):
        rot = rot @ _rot((0, 1, 0), angle)
        bones[f"{side}Thumb{phalanx}"] = place(p, rot)
        p = p + rot @ np.array([length, 0.0, 0.0])
    bones[f"{side}ThumbTip"] = place(p, rot)
    return bones


OPEN = HandPose()
FIST = HandPose(finger_flex=((1.45, 1.65, 1.1),) * 4, finger_spread=(0.0, 0.0, 0.0, 0.0),
                thumb=(0.7, 0.35, 0.7, 0.6))


@functools.cache
def _pinch() -> HandPose:
    """Index half-curled, thumb posed (by least squares) so the two fingertips touch."""
    from scipy.optimize import least_squares

    base = HandPose(finger_flex=((0.75, 0.85, 0.5), (0.5, 0.6, 0.3), (0.6, 0.7, 0.4), (0.7, 0.8, 0.5)))

    def gap(thumb: np.ndarray) -> np.ndarray:
        b = hand_bones(HandPose(base.finger_flex, base.finger_spread, tuple(thumb)), np.zeros(3), np.eye(3))
        return b["rightThumbTip"][0] - b["rightIndexTip"][0]

    fit = least_squares(gap, x0=np.array([0.6, 0.3, 0.4, 0.3]), bounds=([-0.5, -0.5, 0.0, 0.0], [1.5, 1.2, 1.4, 1.4]))
    return HandPose(base.finger_flex, base.finger_spread, tuple(fit.x))


def hand_pose(name: str) -> HandPose:
    """One of the scripted poses: 'open', 'fist', 'pinch'."""
    poses = {"open": lambda: OPEN, "fist": lambda: FIST, "pinch": _pinch}
    if name not in poses:
        raise ValueError(f"unknown hand pose {name!r}; choose from {sorted(poses)}")
    return poses[name]()


_WRIST_HOME = np.array([0.35, -0.2, 1.1])  # in front of the actor, right side, elbow height


def script_frame(script: str, t: float) -> tuple[HandPose, np.ndarray, np.ndarray]:
    """The scripted hand pose and wrist pose (room frame) at time ``t`` (s)."""
    if script not in SCRIPTS:
        raise ValueError(f"unknown script {script!r}; choose from {SCRIPTS}")
    wrist_pos, wrist_rot = _WRIST_HOME.copy(), np.eye(3)
    if script in ("open", "fist", "pinch"):
        return hand_pose(script), wrist_pos, wrist_rot
    if script in ("cycle", "demo"):
        # 2 s per pose with smooth (cosine) transitions: open → fist → open → pinch → open ...
        keys = (OPEN, FIST, OPEN, hand_pose("pinch"))
        phase = (t / 2.0) % len(keys)
        k = int(phase)
        w = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (phase - k) / 0.5))  # 0.5 s blend, then hold
        pose = keys[k - 1].blend(keys[k], w)
    else:
        pose = OPEN
    if script in ("circles", "demo"):
        # 5 cm circles in the horizontal plane, period 4 s, with a ±0.3 rad roll of the wrist.
        angle = 2.0 * math.pi * t / 4.0
        wrist_pos = wrist_pos + 0.05 * np.array([math.cos(angle) - 1.0, math.sin(angle), 0.0])
        wrist_rot = _rot((1, 0, 0), 0.3 * math.sin(angle))
    return pose, wrist_pos, wrist_rot


def _studio_bone(pos: np.ndarray, rot: np.ndarray) -> dict:
    p = _ROOM_TO_STUDIO @ pos
    q = _quat_xyzw(_ROOM_TO_STUDIO @ rot @ _ROOM_TO_STUDIO.T)
    return {"position": dict(zip("xyz", (round(float(v), 6) for v in p), strict=True)),
            "rotation": dict(zip("xyzw", (round(float(v), 6) for v in q), strict=True))}


def make_packet(pose: HandPose, wrist_pos: np.ndarray, wrist_rot: np.ndarray, timestamp: float,
                actor: str = "operator", fps: int = 60, left_glove: bool = True,
                right_glove: bool = True) -> dict:
    """One Studio Live JSON v3 packet (as a dict) with one actor: body, and gloves as asked."""
    body = {
        "hip": _studio_bone(np.array([0.0, 0.0, 0.95]), np.eye(3)),
        "chest": _studio_bone(np.array([0.0, 0.0, 1.25]), np.eye(3)),
        "head": _studio_bone(np.array([0.0, 0.0, 1.6]), np.eye(3)),
        "rightLowerArm": _studio_bone(wrist_pos - wrist_rot @ np.array([0.26, 0.0, 0.0]), wrist_rot),
    }
    if right_glove:
        body.update({k: _studio_bone(*v) for k, v in hand_bones(pose, wrist_pos, wrist_rot, "right").items()})
    if left_glove:
        left_home = np.array([0.35, 0.2, 1.1])
        body.update({k: _studio_bone(*v) for k, v in hand_bones(OPEN, left_home, np.eye(3), "left").items()})
    return {
        "version": 3,
        "fps": fps,
        "scene": {
            "timestamp": round(timestamp, 6),
            "actors": [{
                "name": actor,
                "color": [0, 140, 255],
                "meta": {"hasGloves": left_glove or right_glove, "hasLeftGlove": left_glove,
                         "hasRightGlove": right_glove, "hasBody": True, "hasFace": False},
                "dimensions": {"totalHeight": 1.8, "hipHeight": 0.95},
                "body": body,
            }],
            "props": [],
        },
    }


def encode(packet: dict, compress: bool) -> bytes:
    raw = json.dumps(packet, separators=(",", ":")).encode("utf-8")
    return lz4.frame.compress(raw) if compress else raw


def malformed_datagram(kind: str, good: dict, compress: bool) -> bytes:
    """A broken datagram of the given kind (``MALFORMED_KINDS``), derived from a good packet."""
    raw = encode(good, compress=False)
    if kind == "truncated_json":
        return raw[: len(raw) // 2]
    if kind == "garbage":
        return bytes(random.Random(len(raw)).getrandbits(8) for _ in range(200))
    if kind == "wrong_version":
        return encode({**good, "version": 2}, compress)
    if kind == "truncated_lz4":
        packed = lz4.frame.compress(raw)
        return packed[: len(packed) // 2]
    if kind == "oversized":
        # A datagram cannot exceed 65507 bytes, but its LZ4 payload can inflate beyond any limit.
        return lz4.frame.compress(encode({**good, "padding": " " * 200000}, compress=False))
    if kind == "v2_layout":
        return encode({"version": 3, "timestamp": 0.0, "actors": [], "trackers": [], "props": [],
                       "faces": []}, compress)
    raise ValueError(f"unknown malformed kind {kind!r}; choose from {MALFORMED_KINDS}")


def _parse_silences(specs: list[str]) -> list[tuple[float, float]]:
    out = []
    for spec in specs:
        start, _, duration = spec.partition(":")
        out.append((float(start), float(duration)))
    return out


class StudioLiveSender:
    """Sends Studio Live datagrams to ``(host, port)`` at ``rate_hz`` (see the module doc)."""

    def __init__(self, port: int = 14043, host: str = "127.0.0.1", rate_hz: float = 60.0,
                 compress: bool = False, drop_prob: float = 0.0, malformed_every: int = 0,
                 silences: list[tuple[float, float]] | None = None, seed: int = 0):
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self.address = (host, port)
        self.period = 1.0 / rate_hz
        self.compress = compress
        self.drop_prob = drop_prob
        self.malformed_every = malformed_every
        self.silences = silences or []
        self.rng = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent = 0
        self.frames = 0

    def close(self) -> None:
        self.sock.close()

    def send_packet(self, packet: dict) -> bool:
        """Send one frame, or a malformed / no datagram where the failure options say so."""
        self.frames += 1
        if self.drop_prob > 0 and self.rng.random() < self.drop_prob:
            return False
        if self.malformed_every > 0 and self.frames % self.malformed_every == 0:
            kind = MALFORMED_KINDS[(self.frames // self.malformed_every) % len(MALFORMED_KINDS)]
            datagram = malformed_datagram(kind, packet, self.compress)
        else:
            datagram = encode(packet, self.compress)
        try:
            self.sock.sendto(datagram, self.address)
        except OSError as exc:  # EMSGSIZE for the oversized case on some stacks: a lost datagram
            print(f"send failed ({len(datagram)} bytes): {exc}", file=sys.stderr)
            return False
        self.sent += 1
        return True

    def silent(self, t: float) -> bool:
        return any(start <= t < start + duration for start, duration in self.silences)

    def run(self, packets: Iterator[dict], duration_s: float = math.inf) -> None:
        """Send ``packets`` paced at the rate until they or ``duration_s`` run out."""
        start = time.monotonic()
        for k, packet in enumerate(packets):
            t_due = start + k * self.period
            if t_due - start >= duration_s:
                return
            delay = t_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not self.silent(t_due - start):
                self.send_packet(packet)


def synthetic_packets(script: str, rate_hz: float, actor: str, left_glove: bool = True,
                      right_glove: bool = True) -> Iterator[dict]:
    k = 0
    while True:
        t = k / rate_hz
        pose, pos, rot = script_frame(script, t)
        yield make_packet(pose, pos, rot, t, actor, int(round(rate_hz)), left_glove, right_glove)
        k += 1


def replay_packets(path: Path, loop: bool) -> Iterator[dict]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no packets")
    while True:
        for line in lines:
            yield json.loads(line)
        if not loop:
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rokoko Studio Live stand-in (UDP, JSON v3).")
    parser.add_argument("--host", default="127.0.0.1", help="destination address")
    parser.add_argument("--port", type=int, default=14043, help="destination UDP port")
    parser.add_argument("--rate", type=float, default=60.0, help="frames per second")
    parser.add_argument("--actor", default="operator", help="actor name in the packets")
    parser.add_argument("--script", choices=SCRIPTS, default="demo", help="synthetic motion")
    parser.add_argument("--replay", type=Path, help="send the packets of this JSON-lines file instead")
    parser.add_argument("--loop", action="store_true", help="with --replay: start over at the end")
    parser.add_argument("--duration", type=float, default=math.inf, help="stop after this many seconds")
    parser.add_argument("--lz4", action="store_true", help="LZ4-frame compress every packet")
    parser.add_argument("--no-left-glove", action="store_true", help="actor without a left glove")
    parser.add_argument("--no-right-glove", action="store_true", help="actor without a right glove")
    parser.add_argument("--drop-prob", type=float, default=0.0, help="probability of dropping a frame")
    parser.add_argument("--malformed-every", type=int, default=0,
                        help="replace every N-th frame by a malformed datagram (0: never)")
    parser.add_argument("--silence", action="append", default=[], metavar="START:DURATION",
                        help="send nothing during [START, START+DURATION) seconds (repeatable)")
    parser.add_argument("--write-jsonl", type=Path,
                        help="write --duration seconds of the synthetic stream to this file, send nothing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    left, right = not args.no_left_glove, not args.no_right_glove
    if args.write_jsonl:
        if not math.isfinite(args.duration):
            parser.error("--write-jsonl needs --duration")
        packets = synthetic_packets(args.script, args.rate, args.actor, left, right)
        count = int(args.duration * args.rate)
        with args.write_jsonl.open("w") as out:
            for _ in range(count):
                out.write(json.dumps(next(packets), separators=(",", ":")) + "\n")
        print(f"wrote {count} packets to {args.write_jsonl}")
        return
    packets = (replay_packets(args.replay, args.loop) if args.replay
               else synthetic_packets(args.script, args.rate, args.actor, left, right))
    sender = StudioLiveSender(args.port, args.host, args.rate, args.lz4, args.drop_prob,
                              args.malformed_every, _parse_silences(args.silence), args.seed)
    source = args.replay or f"script {args.script}"
    print(f"Studio Live stand-in: {source} → udp://{args.host}:{args.port} at {args.rate:g} fps"
          f"{' (LZ4)' if args.lz4 else ''}", flush=True)
    try:
        sender.run(packets, args.duration)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        sender.close()
        print(f"sent {sender.sent} of {sender.frames} frames", flush=True)


if __name__ == "__main__":
    main()
