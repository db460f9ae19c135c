"""``sernf-bag2zarr``: demonstration bags (rosbag2, sqlite3 or MCAP) -> episodes in a store.

What one bag becomes (paper §V-B / appendix E2: demonstrations resampled to 10 Hz with linear
interpolation):

* **Episodes.** ``/sernf/episode`` START ... END pairs of one episode id (``sernf-record``
  writes them; one bag per demonstration). ABORT drops the episode. When one span encloses
  another (``sernf-record``'s demonstration around a simulator's own episode), the inner one
  is the episode (before its START the scene was not yet reset, after its END nothing acts) and,
  if its END carries no labels, it takes the enclosing END's (the operator's answers). A bag
  without episode events is one episode labeled by its metadata (``custom_data``
  ``sernf.subtask_success``, ``sernf.operator``).
* **Labels.** The END event's ``reason`` is ``"<why> name=1 name=0 ... [operator=<name>]"``:
  one ``name=0|1`` token per subtask (what the operator marked), see ``format_end_reason``.
  ``why`` in ``TRUNCATION_REASONS`` makes the episode a truncation, anything else terminal.
* **Time.** Every stream is placed on the time axis by its **header stamps** (when the sensor
  saw it / the driver executed it), not by when the recorder received it; a message whose
  header stamp is zero falls back to the bag's receive time. The step grid is
  ``t_k = t0 + k / control_rate_hz`` over the span where every observation stream has data; a
  step is kept when its action interval ``[t_k, t_k+1)`` ends inside that span (the observation
  after the last action is not stored, as in every episode of the store). Stamps within
  ``ON_GRID_S`` of a step time count as on it (a simulator stamps exactly on the grid; float64
  seconds since the epoch resolve only ~0.2 µs).
* **Resampling.** Joint positions and EE positions: linear interpolation; EE orientations:
  slerp (scipy); images: the latest frame at or before ``t_k`` (never a future frame);
  ``sensor_msgs/Image`` rgb8/bgr8 and ``CompressedImage`` (PNG/JPEG, decoded with imageio).
* **Action** ``a_k`` (the executed command, as the drivers publish it, stamped when it was
  applied): the arm's executed relative poses stamped in ``[t_k, t_k+1)`` composed in order
  (each is a delta in the then current EE frame, so ``d = d_1 * d_2 * ...``; identity if none),
  and the hand's latest executed joint target before ``t_k+1``. A command stamped ``t_k`` reacts
  to (and cannot have changed) the observation of ``t_k``; one stamped ``t_k+1`` acts after it.
  ``r_k``: the sum of ``/sernf/reward`` values stamped in ``(t_k, t_k+1]`` (the reward received
  after the step's action).
* **Bad bags** (unreadable or truncated, a missing topic, a gap longer than ``max_gap_s`` in an
  observation stream, stamps going backwards, an image encoding or size we cannot store) are
  reported with one line each and skipped; the other bags still convert. A bag's episodes are
  all validated before the first is appended, and each append is atomic (the store's commit),
  so nothing half-written becomes visible.
* **Idempotent.** Episode ids are derived from the bag's content hash (sha256 over its files)
  and the episode's index, and the hash is kept in the metadata (``extra.bag_sha256``):
  converting the same bag again adds nothing.

The core is pure (numpy, scipy, rosbags, imageio); no rclpy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sqlite3
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.spatial.transform import Rotation, Slerp

from .store import EpisodeStore, ReplaySchemaError, StoreSpec

__all__ = [
    "TRUNCATION_REASONS",
    "BadBag",
    "BagEpisode",
    "ConversionConfig",
    "ConversionReport",
    "bag_sha256",
    "convert_bags",
    "format_end_reason",
    "main",
    "parse_end_reason",
    "read_bag",
    "spec_for",
]

#: END reasons that mean the demonstration was cut short (time limit), not finished.
TRUNCATION_REASONS = frozenset({"timeout", "time_limit", "truncated"})
EPISODE_START, EPISODE_END, EPISODE_ABORT = 0, 1, 2
#: Stamps this close to a step time count as on it (seconds; float64 epoch seconds resolve ~0.24 µs).
ON_GRID_S = 1e-6
_IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


@dataclass(frozen=True)
class ConversionConfig:
    """Which topics make an episode, and how they are resampled."""

    control_rate_hz: float = 10.0
    """Step rate of the episodes (the paper's scissors task: 10 Hz)."""
    image_topics: Mapping[str, str] = field(default_factory=lambda: {
        "front_rgb": "/cameras/front/image_raw",
        "under_rgb": "/cameras/under/image_raw",
        "left_rgb": "/cameras/left/image_raw",
    })
    """Observation key -> image topic (sensor_msgs/Image or CompressedImage)."""
    joint_state_topic: str = "/orca_hand/joint_states"
    """Measured hand joints (sensor_msgs/JointState); '' for none."""
    joint_state_key: str = "hand_joints"
    """Observation key of the joint positions."""
    ee_pose_topic: str = "/franka/ee_pose"
    """Measured end-effector pose (PoseStamped); '' for none."""
    ee_pose_key: str = "ee_pose"
    """Observation key of the pose ``[x, y, z, qw, qx, qy, qz]``."""
    arm_command_topic: str = "/franka_bridge/executed_command"
    """Executed relative EE command (PoseStamped); '' for no arm in the action."""
    hand_command_topic: str = "/orca_hand_driver/executed_command"
    """Executed hand joint targets (JointState); '' for no hand in the action."""
    reward_topic: str = "/sernf/reward"
    """sernf_interfaces/RewardEvent (optional in a bag: no rewards means zero reward)."""
    episode_topic: str = "/sernf/episode"
    """sernf_interfaces/EpisodeEvent (episode boundaries and the operator's labels)."""
    max_gap_s: float = 0.5
    """Longest silence tolerated inside an observation stream before the bag is refused."""
    operator: str | None = None
    """Operator name for bags that do not carry one."""

    def __post_init__(self) -> None:
        rate = float(self.control_rate_hz)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"control_rate_hz must be positive, got {self.control_rate_hz!r}")
        if not math.isfinite(self.max_gap_s) or self.max_gap_s <= 0:
            raise ValueError(f"max_gap_s must be positive, got {self.max_gap_s!r}")
        if not self.arm_command_topic and not self.hand_command_topic:
            raise ValueError("the action needs arm_command_topic and/or hand_command_topic")
        if not (self.image_topics or self.joint_state_topic or self.ee_pose_topic):
            raise ValueError("no observation topic configured")
        keys = [*self.image_topics, self.joint_state_key, self.ee_pose_key]
        if len(set(keys)) != len(keys):
            raise ValueError(f"observation keys must be distinct, got {keys}")

    def observation_topics(self) -> dict[str, str]:
        topics = dict(self.image_topics)
        if self.joint_state_topic:
            topics[self.joint_state_key] = self.joint_state_topic
        if self.ee_pose_topic:
            topics[self.ee_pose_key] = self.ee_pose_topic
        return topics

    def required_topics(self) -> list[str]:
        out = list(self.observation_topics().values())
        out += [t for t in (self.arm_command_topic, self.hand_command_topic) if t]
        return out


class BadBag(ValueError):
    """A bag (or one of its episodes) that cannot become episodes; the message says why."""


@dataclass
class BagEpisode:
    """One resampled episode of a bag, ready for ``EpisodeStore.append_episode``."""

    steps: dict[str, np.ndarray]
    metadata: dict[str, Any]


def format_end_reason(why: str, subtask_success: Mapping[str, bool], operator: str | None = None) -> str:
    """The END event reason ``sernf-record`` writes: ``"<why> name=1 name=0 [operator=x]"``."""
    for name in subtask_success:
        if not name or any(c in name for c in " ="):
            raise ValueError(f"subtask names may not be empty or contain ' ' or '=': {name!r}")
    if not why or any(c in why for c in " ="):
        raise ValueError(f"the END reason must be one word, got {why!r}")
    tokens = [why, *(f"{k}={int(bool(v))}" for k, v in subtask_success.items())]
    if operator:
        tokens.append(f"operator={operator.replace(' ', '_')}")
    return " ".join(tokens)


def parse_end_reason(reason: str) -> tuple[str, dict[str, bool], str | None]:
    """Inverse of ``format_end_reason``: (why, subtask flags, operator or None)."""
    tokens = reason.split()
    why = tokens[0] if tokens and "=" not in tokens[0] else ""
    flags: dict[str, bool] = {}
    operator = None
    for token in tokens[1 if why else 0:]:
        name, sep, value = token.partition("=")
        if not sep:
            continue  # free text after the label tokens is allowed
        if name == "operator":
            operator = value or None
        elif value in ("0", "1"):
            flags[name] = value == "1"
        else:
            raise BadBag(f"END label {token!r} is not name=0|1")
    return why, flags, operator


def bag_sha256(path: str | Path) -> str:
    """Content hash of a bag (a rosbag2 directory: every file, names included; or one file)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- reading


@dataclass
class _Stream:
    stamps: list[float] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


def _stamp(msg: Any, receive_ns: int) -> float:
    header = getattr(msg, "header", None)
    if header is not None and (header.stamp.sec or header.stamp.nanosec):
        return header.stamp.sec + header.stamp.nanosec * 1e-9
    return receive_ns * 1e-9


def _decode_image(msg: Any, msgtype: str, topic: str) -> np.ndarray:
    if msgtype.endswith("CompressedImage"):
        import imageio.v3 as iio

        try:
            image = np.asarray(iio.imread(io.BytesIO(bytes(msg.data))))
        except (OSError, ValueError) as exc:
            raise BadBag(f"{topic}: compressed image ({msg.format!r}) does not decode: {exc}") from exc
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise BadBag(f"{topic}: compressed image is {image.shape} {image.dtype}, not 8-bit colour")
        # image_transport's format string ("bgr8; jpeg compressed bgr8") names the source
        # encoding; PNG/JPEG decoders return RGB whichever it was.
        return np.ascontiguousarray(image[..., :3])
    encoding = msg.encoding.lower()
    if encoding not in ("rgb8", "bgr8"):
        raise BadBag(f"{topic}: image encoding {msg.encoding!r} (only rgb8/bgr8 become rgb observations)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if step < 3 * w or data.size < step * h:
        raise BadBag(f"{topic}: image {w}x{h} with step {step} carries {data.size} bytes")
    image = data[: step * h].reshape(h, step)[:, : 3 * w].reshape(h, w, 3)
    return np.ascontiguousarray(image[..., ::-1] if encoding == "bgr8" else image)


def _pose(msg: Any) -> np.ndarray:
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z], dtype=np.float64)


def _read_custom_data(path: Path) -> dict[str, str]:
    meta = path / "metadata.yaml" if path.is_dir() else path.with_name("metadata.yaml")
    if not meta.is_file():
        return {}
    try:
        info = yaml.safe_load(meta.read_text()).get("rosbag2_bagfile_information", {})
    except (yaml.YAMLError, AttributeError) as exc:
        raise BadBag(f"metadata.yaml is unreadable: {exc}") from exc
    custom = info.get("custom_data") or {}
    return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}


# Errors a damaged bag raises from rosbags and its storage back-ends (sqlite3, mcap's struct
# parsing, the CDR deserializer); anything else is a bug and propagates.
def _bag_errors() -> tuple[type[BaseException], ...]:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError
    from rosbags.serde import SerdeError

    return (AnyReaderError, ReaderError, SerdeError, sqlite3.DatabaseError, struct.error,
            EOFError, OSError, UnicodeDecodeError, IndexError, KeyError, AssertionError)


def read_bag(path: str | Path, config: ConversionConfig) -> list[BagEpisode]:
    """All episodes of one bag, resampled; raises ``BadBag`` with the reason otherwise."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise BadBag("does not exist")
    obs_topics = config.observation_topics()
    wanted = set(config.required_topics()) | {config.reward_topic, config.episode_topic}
    streams: dict[str, _Stream] = {t: _Stream() for t in wanted}
    joint_names: dict[str, tuple[str, ...]] = {}
    try:
        custom = _read_custom_data(path)
        with AnyReader([path]) as reader:
            present = {c.topic: c.msgtype for c in reader.connections}
            missing = [t for t in config.required_topics() if t not in present]
            if missing:
                raise BadBag(f"missing topic(s) {missing}")
            for topic in obs_topics.values():
                if topic in config.image_topics.values() and present[topic] not in _IMAGE_TYPES:
                    raise BadBag(f"{topic} is {present[topic]}, not an image")
            connections = [c for c in reader.connections if c.topic in wanted]
            for conn, receive_ns, raw in reader.messages(connections=connections):
                msg = reader.deserialize(raw, conn.msgtype)
                stream = streams[conn.topic]
                stream.stamps.append(_stamp(msg, receive_ns))
                if conn.msgtype in _IMAGE_TYPES:
                    stream.values.append(_decode_image(msg, conn.msgtype, conn.topic))
                elif conn.msgtype == "sensor_msgs/msg/JointState":
                    names = tuple(msg.name)
                    if joint_names.setdefault(conn.topic, names) != names:
                        raise BadBag(f"{conn.topic}: joint names change within the bag")
                    stream.values.append(np.asarray(msg.position, dtype=np.float64))
                elif conn.msgtype == "geometry_msgs/msg/PoseStamped":
                    stream.values.append(_pose(msg))
                elif conn.topic == config.reward_topic:
                    stream.values.append(float(msg.value))
                elif conn.topic == config.episode_topic:
                    stream.values.append((int(msg.event), str(msg.reason), str(msg.episode_id)))
                else:
                    raise BadBag(f"{conn.topic} has unexpected type {conn.msgtype}")
    except BadBag:
        raise
    except _bag_errors() as exc:
        raise BadBag(f"unreadable or truncated ({type(exc).__name__}: {exc})") from exc
    for topic in config.required_topics():
        stamps = np.asarray(streams[topic].stamps)
        if stamps.size == 0:
            raise BadBag(f"no messages on {topic}")
        back = np.flatnonzero(np.diff(stamps) < 0)
        if back.size:
            raise BadBag(f"{topic}: header stamps go backwards at message {int(back[0]) + 1}")
    return _episodes(streams, config, custom)


def _episodes(streams: Mapping[str, _Stream], config: ConversionConfig,
              custom: Mapping[str, str]) -> list[BagEpisode]:
    events = streams[config.episode_topic]
    spans: list[tuple[float, float, str, dict[str, bool], str | None]] = []
    if events.stamps:
        started: dict[str, float] = {}
        for stamp, (kind, reason, episode_id) in sorted(zip(events.stamps, events.values, strict=True),
                                                         key=lambda e: e[0]):
            if kind == EPISODE_START:
                started[episode_id] = stamp
            elif kind == EPISODE_ABORT:
                started.pop(episode_id, None)
            elif kind == EPISODE_END and episode_id in started:
                why, flags, operator = parse_end_reason(reason)
                spans.append((started.pop(episode_id), stamp, why, flags, operator))
        spans = _innermost_spans(spans)
        if not spans:
            raise BadBag("no complete START..END episode (recording interrupted?)")
    else:
        try:
            flags = json.loads(custom["sernf.subtask_success"])
        except KeyError:
            raise BadBag("no episode events and no sernf.subtask_success in the bag metadata") from None
        except json.JSONDecodeError as exc:
            raise BadBag(f"sernf.subtask_success is not JSON: {exc}") from exc
        if not isinstance(flags, dict) or not all(isinstance(v, bool) for v in flags.values()):
            raise BadBag(f"sernf.subtask_success must map names to bools, got {flags!r}")
        first = max(streams[t].stamps[0] for t in config.required_topics())
        last = min(streams[t].stamps[-1] for t in config.required_topics())
        spans.append((first, last, custom.get("sernf.end_reason", "operator"), flags, custom.get("sernf.operator")))
    return [_resample(streams, config, *span) for span in spans]


def _innermost_spans(spans: list[tuple]) -> list[tuple]:
    """Spans that enclose no other span; one without labels takes its tightest enclosing
    span's labels and operator (sernf-record's END around a simulator's episode)."""
    def encloses(outer: tuple, inner: tuple) -> bool:
        return outer is not inner and outer[0] <= inner[0] and inner[1] <= outer[1]

    out = []
    for span in spans:
        if any(encloses(span, other) for other in spans):
            continue
        start, end, why, flags, operator = span
        around = sorted((o for o in spans if encloses(o, span)), key=lambda o: o[1] - o[0])
        if around and not flags:
            flags, operator = around[0][3], operator or around[0][4]
        out.append((start, end, why, flags, operator))
    return out


def _resample(streams: Mapping[str, _Stream], config: ConversionConfig, start: float, end: float,
              why: str, flags: dict[str, bool], operator: str | None) -> BagEpisode:
    dt = 1.0 / config.control_rate_hz
    obs_topics = config.observation_topics()
    # Every observation stream must have data at t0 (images: a frame at or before it) and the
    # hand a first executed target: the episode starts where all of them exist.
    t0 = max([start, *(streams[t].stamps[0] for t in obs_topics.values())]
             + ([streams[config.hand_command_topic].stamps[0]] if config.hand_command_topic else []))
    t_last = min([end, *(streams[t].stamps[-1] for t in obs_topics.values()
                         if t not in config.image_topics.values())])
    if t_last < t0:
        raise BadBag(f"episode {start:.3f}..{end:.3f} has no span where every stream has data")
    # Steps whose action interval [t_k, t_k + dt) ends by t_last.
    count = int(math.floor((t_last - t0 + ON_GRID_S) / dt))
    if count < 1:
        raise BadBag(f"episode {start:.3f}..{end:.3f} is shorter than one control step")
    grid = t0 + dt * np.arange(count)
    for topic in obs_topics.values():
        stamps = np.asarray(streams[topic].stamps)
        inside = stamps[(stamps >= t0 - config.max_gap_s) & (stamps <= grid[-1] + config.max_gap_s)]
        edges = np.concatenate([[t0], inside, [grid[-1]]])
        gap = float(np.max(np.diff(np.sort(edges)))) if edges.size > 1 else 0.0
        if gap > config.max_gap_s:
            raise BadBag(f"{topic}: gap of {gap:.3f} s > max_gap_s {config.max_gap_s:g}")
    steps: dict[str, np.ndarray] = {}
    for key, topic in config.image_topics.items():
        s = streams[topic]
        index = np.searchsorted(np.asarray(s.stamps), grid + ON_GRID_S, side="right") - 1
        shapes = {s.values[i].shape for i in np.unique(index)}
        if len(shapes) != 1:
            raise BadBag(f"{topic}: image size changes within the episode ({sorted(shapes)})")
        steps[key] = np.stack([s.values[i] for i in index])
    if config.joint_state_topic:
        s = streams[config.joint_state_topic]
        values = np.stack(s.values)
        stamps = np.asarray(s.stamps)
        steps[config.joint_state_key] = np.stack(
            [np.interp(grid, stamps, values[:, j]) for j in range(values.shape[1])], axis=1
        ).astype(np.float32)
    if config.ee_pose_topic:
        steps[config.ee_pose_key] = _interp_poses(streams[config.ee_pose_topic], grid).astype(np.float32)
    actions = []
    if config.arm_command_topic:
        actions.append(_composed_deltas(streams[config.arm_command_topic], grid, dt))
    if config.hand_command_topic:
        s = streams[config.hand_command_topic]
        index = np.searchsorted(np.asarray(s.stamps), grid + dt - ON_GRID_S, side="left") - 1
        actions.append(np.stack([s.values[i] for i in index]))
    steps["action"] = np.concatenate(actions, axis=1).astype(np.float32)
    rewards = streams[config.reward_topic]
    reward = np.zeros(count, dtype=np.float32)
    for stamp, value in zip(rewards.stamps, rewards.values, strict=True):
        k = int(math.ceil((stamp - t0 - ON_GRID_S) / dt)) - 1  # (t_k, t_k + dt] -> step k
        if 0 <= k < count:
            reward[k] += value
    steps["reward"] = reward
    steps["timestamp"] = grid.astype(np.float64)
    metadata = {
        "source": "demo",
        "terminated": why not in TRUNCATION_REASONS,
        "subtask_success": flags,
        "operator": operator or config.operator,
        "extra": {"end_reason": why, "t_start": float(t0)},
    }
    if not flags:
        metadata["success"] = False
    return BagEpisode(steps=steps, metadata=metadata)


def _interp_poses(stream: _Stream, grid: np.ndarray) -> np.ndarray:
    poses = np.stack(stream.values)
    stamps = np.asarray(stream.stamps)
    # Repeated stamps (a republished pose) would make Slerp's times non-increasing: keep the last.
    keep = np.concatenate([np.diff(stamps) > 0, [True]])
    stamps, poses = stamps[keep], poses[keep]
    out = np.empty((grid.size, 7))
    for axis in range(3):
        out[:, axis] = np.interp(grid, stamps, poses[:, axis])
    quats_xyzw = poses[:, [4, 5, 6, 3]]
    if stamps.size == 1:
        rotations = Rotation.from_quat(np.repeat(quats_xyzw, grid.size, axis=0))
    else:
        rotations = Slerp(stamps, Rotation.from_quat(quats_xyzw))(np.clip(grid, stamps[0], stamps[-1]))
    xyzw = rotations.as_quat()
    xyzw[xyzw[:, 3] < 0] *= -1  # qw >= 0: the action space's convention for the same rotation
    out[:, 3], out[:, 4:] = xyzw[:, 3], xyzw[:, :3]
    return out


def _composed_deltas(stream: _Stream, grid: np.ndarray, dt: float) -> np.ndarray:
    stamps = np.asarray(stream.stamps)
    deltas = np.stack(stream.values)
    out = np.zeros((grid.size, 7))
    out[:, 3] = 1.0
    lo = np.searchsorted(stamps, grid - ON_GRID_S, side="left")  # [t_k, t_k + dt)
    hi = np.searchsorted(stamps, grid + dt - ON_GRID_S, side="left")
    for k in range(grid.size):
        translation, rotation = np.zeros(3), Rotation.identity()
        for d in deltas[lo[k]:hi[k]]:
            # A delta is expressed in the EE frame at the time it is applied: T <- T * D.
            translation = translation + rotation.apply(d[:3])
            rotation = rotation * Rotation.from_quat(d[[4, 5, 6, 3]])
        xyzw = rotation.as_quat()
        if xyzw[3] < 0:
            xyzw = -xyzw
        out[k, :3], out[k, 3], out[k, 4:] = translation, xyzw[3], xyzw[:3]
    return out


def spec_for(episode: BagEpisode, config: ConversionConfig) -> StoreSpec:
    """The store spec an episode converted with ``config`` needs."""
    obs: dict[str, dict[str, Any]] = {}
    for key in config.image_topics:
        obs[key] = {"shape": list(episode.steps[key].shape[1:]), "kind": "rgb"}
    if config.joint_state_topic:
        obs[config.joint_state_key] = {"shape": [episode.steps[config.joint_state_key].shape[1]], "kind": "lowdim"}
    if config.ee_pose_topic:
        obs[config.ee_pose_key] = {"shape": [7], "kind": "lowdim", "quaternion_at": 3}
    return StoreSpec(obs=obs, action_dim=int(episode.steps["action"].shape[1]),
                     control_rate_hz=config.control_rate_hz)


# --------------------------------------------------------------------------- converting


@dataclass
class ConversionReport:
    """What ``convert_bags`` did."""

    converted: dict[str, list[str]] = field(default_factory=dict)
    """Bag -> ids of the episodes appended."""
    already_present: dict[str, list[str]] = field(default_factory=dict)
    """Bag -> ids already in the store (the same bag converted before)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Bag -> why it was skipped."""
    steps: int = 0
    successes: int = 0

    @property
    def episodes(self) -> int:
        return sum(len(v) for v in self.converted.values())


def convert_bags(
    bags: Sequence[str | Path],
    store_uri: str | Path,
    config: ConversionConfig | None = None,
    *,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> ConversionReport:
    """Convert every bag into episodes of ``store_uri`` (created from the first good bag's
    layout if missing). Bad bags are skipped with their reason in the report."""
    config = config or ConversionConfig()
    report = ConversionReport()
    store: EpisodeStore | None = None
    if (Path(store_uri) / "zarr.json").is_file() or "://" in str(store_uri):
        store = EpisodeStore(store_uri, mode="a")
    iterate = progress or (lambda items: items)
    for bag in iterate(list(bags)):
        name = str(bag)
        try:
            digest = bag_sha256(bag) if Path(bag).exists() else ""
            episodes = read_bag(bag, config)
            for i, episode in enumerate(episodes):
                episode.metadata["id"] = f"demo-{digest[:16]}-{i}"
                episode.metadata["extra"].update(
                    {"bag": Path(bag).name, "bag_sha256": digest, "bag_episode": i})
            spec = spec_for(episodes[0], config)
            if store is None:
                store = EpisodeStore(store_uri, mode="a", spec=spec)
            elif store.spec != spec:
                raise BadBag(f"layout {spec.to_json()} does not match the store's {store.spec.to_json()}")
            known = set(store.episode_ids())
            todo = [e for e in episodes if e.metadata["id"] not in known]
            report.already_present[name] = [e.metadata["id"] for e in episodes if e.metadata["id"] in known]
            for episode in todo:
                # Validate every episode of the bag before the first append.
                store._validate_steps(episode.steps)  # the store's own check, nothing written
            appended = []
            for episode in todo:
                appended.append(store.append_episode(episode.steps, episode.metadata))
                length = int(episode.steps["action"].shape[0])
                report.steps += length
                meta = store.episode_metadata(appended[-1])
                report.successes += int(meta["success"])
            report.converted[name] = appended
        except (BadBag, ReplaySchemaError) as exc:
            report.skipped[name] = str(exc)
    return report


def format_report(report: ConversionReport) -> str:
    """The summary table printed at the end of a conversion."""
    rate = f"{100.0 * report.successes / report.episodes:.0f}%" if report.episodes else "-"
    again = sum(len(v) for v in report.already_present.values())
    lines = [
        f"{'bags':<22}{len(report.converted) + len(report.skipped):>8}",
        f"{'episodes added':<22}{report.episodes:>8}",
        f"{'steps added':<22}{report.steps:>8}",
        f"{'success rate (added)':<22}{rate:>8}",
        f"{'already in the store':<22}{again:>8}",
        f"{'bags skipped':<22}{len(report.skipped):>8}",
    ]
    lines += [f"  skipped {bag}: {why}" for bag, why in report.skipped.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sernf-bag2zarr", description=__doc__.split("\n\n")[0])
    parser.add_argument("bags", nargs="+", type=Path, help="rosbag2 directories (sqlite3 or MCAP)")
    parser.add_argument("--out", required=True, help="episode store (created if missing)")
    parser.add_argument("--rate", type=float, default=10.0, help="control rate in Hz (default 10)")
    parser.add_argument("--max-gap", type=float, default=0.5, help="longest tolerated stream gap in s")
    parser.add_argument("--operator", help="operator name for bags that carry none")
    parser.add_argument("--image", action="append", metavar="KEY=TOPIC",
                        help="observation key and image topic; repeatable (default: the three cameras)")
    parser.add_argument("--no-arm", action="store_true", help="no Franka: hand-only episodes")
    parser.add_argument("--no-hand", action="store_true", help="no ORCA hand: arm-only episodes")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {"control_rate_hz": args.rate, "max_gap_s": args.max_gap, "operator": args.operator}
    if args.image:
        images = dict(item.split("=", 1) for item in args.image if "=" in item)
        if len(images) != len(args.image):
            parser.error("--image wants KEY=TOPIC")
        kwargs["image_topics"] = images
    if args.no_arm:
        kwargs.update(arm_command_topic="", ee_pose_topic="")
    if args.no_hand:
        kwargs.update(hand_command_topic="", joint_state_topic="")
    try:
        config = ConversionConfig(**kwargs)
    except ValueError as exc:
        parser.error(str(exc))
    from tqdm import tqdm

    def progress(items: Iterable[Any]) -> Iterable[Any]:
        return tqdm(items, desc="bags", unit="bag", file=sys.stderr)

    report = convert_bags(args.bags, args.out, config, progress=progress)
    for bag, why in report.skipped.items():
        print(f"skipped {bag}: {why}", file=sys.stderr)
    print(format_report(report))
    return 0 if report.converted or not report.skipped else 1


if __name__ == "__main__":
    sys.exit(main())
