"""``sernf-record``: record demonstrations as rosbag2 MCAP bags, **one bag per demonstration**.

Records exactly what a demonstration needs (``demonstration_topics``): each camera's
``image_raw`` and ``camera_info``, ``/orca_hand/joint_states``, ``/franka/ee_pose``, the
drivers' ``executed_command`` topics, ``/sernf/reward`` and ``/sernf/episode``. Sensor streams
are subscribed best-effort (cameras and franka_ros2's state broadcaster publish best-effort; a
reliable subscription would see none of it); commands, rewards and events reliable.

Per demonstration: the recorder opens a bag, waits until DDS has matched it to the publishers
of the streams (``--settle`` seconds, then up to 10 s more until every camera, joint, pose and
command stream has one and every publisher the graph lists is matched; a warning names what is
still missing), publishes an ``EpisodeEvent`` START on ``/sernf/episode``, records until the
operator presses Enter (or ``--duration`` elapses), asks for each subtask "succeeded? [y/n]" (or
takes ``--label retrieve=1,cut=0``), publishes END with the labels in its reason
(``sernf_data.bag2zarr.format_end_reason``), waits until that END is in the bag (and, up to 4 s,
the END of any episode that started during the recording, e.g. a simulator's) and closes it. Both events go through the graph, so they are recorded by whichever
recorder runs, and ``sernf-bag2zarr`` reads the labels from them.

Two back-ends behind the same entry point:

* ``ros2`` on PATH (robot PC, full ROS install): ``ros2 bag record -s mcap`` with a QoS
  override file and the topic list; this process only publishes the events and asks.
* otherwise (these machines: rclpy from wheels, no rosbag2): ``BagRecorderNode`` subscribes with
  ``raw=True`` (the CDR bytes as DDS delivered them, nothing re-serialized) and writes them with
  ``rosbags.rosbag2.Writer`` (version 9, MCAP), receive time as the bag timestamp.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RecordConfig", "demonstration_topics", "main", "parse_label", "qos_override_yaml"]

#: Topic -> (message type, sensor stream?) besides the cameras.
_FIXED_TOPICS = {
    "/orca_hand/joint_states": ("sensor_msgs/msg/JointState", True),
    "/franka/ee_pose": ("geometry_msgs/msg/PoseStamped", True),
    "/orca_hand_driver/executed_command": ("sensor_msgs/msg/JointState", False),
    "/franka_bridge/executed_command": ("geometry_msgs/msg/PoseStamped", False),
    "/sernf/reward": ("sernf_interfaces/msg/RewardEvent", False),
    "/sernf/episode": ("sernf_interfaces/msg/EpisodeEvent", False),
}


@dataclass(frozen=True)
class RecordConfig:
    """What to record and where."""

    out_dir: Path
    """Directory that receives one bag directory per demonstration."""
    cameras: tuple[str, ...] = ("front", "under", "left")
    """Camera names: ``/cameras/<name>/image_raw`` and ``/cameras/<name>/camera_info``."""
    subtasks: tuple[str, ...] = ("retrieve", "cut")
    """Subtasks the operator marks at the end of each demonstration."""
    operator: str = ""
    """Operator name written into each END event."""

    def __post_init__(self) -> None:
        for name in self.subtasks:
            if not name or any(c in name for c in " =,"):
                raise ValueError(f"subtask names may not be empty or contain ' ', '=' or ',': {name!r}")
        if not self.subtasks:
            raise ValueError("at least one subtask to mark")
        for cam in self.cameras:
            if not cam or "/" in cam:
                raise ValueError(f"camera names are single path segments, got {cam!r}")


def demonstration_topics(cameras: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """Topic -> (message type, best-effort sensor stream?) of a demonstration bag."""
    topics: dict[str, tuple[str, bool]] = {}
    for cam in cameras:
        topics[f"/cameras/{cam}/image_raw"] = ("sensor_msgs/msg/Image", True)
        topics[f"/cameras/{cam}/camera_info"] = ("sensor_msgs/msg/CameraInfo", True)
    topics.update(_FIXED_TOPICS)
    return topics


def qos_override_yaml(topics: dict[str, tuple[str, bool]]) -> str:
    """``ros2 bag record --qos-profile-overrides-path`` file: best-effort sensor streams."""
    lines = []
    for topic, (_, sensor) in topics.items():
        if sensor:
            lines += [f"{topic}:", "  reliability: best_effort", "  history: keep_last", "  depth: 10"]
    return "\n".join(lines) + "\n"


def parse_label(text: str, subtasks: Sequence[str]) -> dict[str, bool]:
    """``"retrieve=1,cut=0"`` -> flags; every subtask must be given exactly once."""
    flags: dict[str, bool] = {}
    for item in filter(None, (part.strip() for part in text.replace(" ", ",").split(","))):
        name, sep, value = item.partition("=")
        if not sep or value not in ("0", "1", "y", "n") or name not in subtasks or name in flags:
            raise ValueError(f"label {item!r}: want one NAME=1|0 per subtask {list(subtasks)}")
        flags[name] = value in ("1", "y")
    if set(flags) != set(subtasks):
        raise ValueError(f"label {text!r} misses subtask(s) {sorted(set(subtasks) - set(flags))}")
    return flags


def ask_labels(subtasks: Sequence[str], ask: Callable[[str], str] = input) -> dict[str, bool]:
    """Ask the operator about each subtask until the answer is y or n."""
    flags = {}
    for name in subtasks:
        while True:
            answer = ask(f"  {name} succeeded? [y/n] ").strip().lower()
            if answer in ("y", "n"):
                flags[name] = answer == "y"
                break
    return flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sernf-record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the bags")
    parser.add_argument("--operator", default=os.environ.get("USER", ""), help="operator name")
    parser.add_argument("--subtasks", default="retrieve,cut", help="comma-separated subtask names")
    parser.add_argument("--cameras", default="front,under,left", help="comma-separated camera names")
    parser.add_argument("--episodes", type=int, default=1, help="demonstrations to record")
    parser.add_argument("--duration", type=float, help="seconds per demonstration (default: until Enter)")
    parser.add_argument("--label", help="labels without asking, e.g. retrieve=1,cut=0")
    parser.add_argument("--end-reason", default="operator", help="END reason word (timeout = truncated)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait before START (the rclpy back-end then also waits for matched publishers)")
    parser.add_argument("--use-sim-time", action="store_true",
                        help="stamp the episode events on /clock (recording a simulator that publishes it)")
    parser.add_argument("--rosbags", action="store_true", help="use the rclpy+rosbags recorder even if ros2 is on PATH")
    args = parser.parse_args(argv)
    try:
        config = RecordConfig(out_dir=args.out, cameras=tuple(filter(None, args.cameras.split(","))),
                              subtasks=tuple(filter(None, args.subtasks.split(","))), operator=args.operator)
        if args.label:
            parse_label(args.label, config.subtasks)
    except ValueError as exc:
        parser.error(str(exc))
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    # rclpy only from here on: the ROS side lives in recorder_node (pure core, thin ROS shell).
    from .recorder_node import run_recording

    return run_recording(args, config)


if __name__ == "__main__":
    sys.exit(main())
