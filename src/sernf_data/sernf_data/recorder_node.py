"""ROS side of ``sernf-record``: a bag recorder over rclpy + rosbags, and the event publisher.

``BagRecorderNode`` subscribes with ``raw=True``: rclpy hands over the serialized CDR bytes
exactly as they came off DDS, which is what rosbag2 stores, so nothing is deserialized or
re-serialized. Each message is written with its receive time (``time.time_ns()`` when the
callback runs) as the bag timestamp; the converter places messages by their header stamps.
"""

from __future__ import annotations

import argparse
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState

from sernf_interfaces.msg import EpisodeEvent, RewardEvent

from .bag2zarr import format_end_reason
from .bag_types import typestore
from .record import RecordConfig, ask_labels, demonstration_topics, parse_label, qos_override_yaml

__all__ = ["BagRecorderNode", "EventPublisher"]

# The message types a demonstration bag holds (explicit: nothing is imported by name).
_MESSAGE_CLASSES = {
    "sensor_msgs/msg/Image": Image,
    "sensor_msgs/msg/CameraInfo": CameraInfo,
    "sensor_msgs/msg/JointState": JointState,
    "geometry_msgs/msg/PoseStamped": PoseStamped,
    "sernf_interfaces/msg/RewardEvent": RewardEvent,
    "sernf_interfaces/msg/EpisodeEvent": EpisodeEvent,
}
#: Message types of the streams a demonstration cannot do without (camera info, rewards and
#: episode events may legitimately be absent).
_NEEDED_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/JointState", "geometry_msgs/msg/PoseStamped")
#: After ``--settle``, how much longer to wait for unmatched publishers before starting anyway.
MATCH_WAIT_S = 10.0
#: After our own END is in the bag, how long to wait for the END of an episode that started
#: inside the recording (a simulator's): a reliable sample lost on the way is only resent after
#: the writer's next heartbeat (Fast DDS: every 3 s), and without it the bag misses its span.
NESTED_END_WAIT_S = 4.0
SENSOR_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE)
RELIABLE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                          durability=DurabilityPolicy.VOLATILE)


class BagRecorderNode(Node):
    """Writes every message of ``topics`` into one MCAP bag at ``path`` until ``close()``."""

    def __init__(self, context: Context, path: Path, topics: dict[str, tuple[str, bool]]) -> None:
        super().__init__(f"sernf_record_{uuid.uuid4().hex[:8]}", context=context)
        from rosbags.rosbag2 import StoragePlugin, Writer

        unknown = sorted(t for t, (msgtype, _) in topics.items() if msgtype not in _MESSAGE_CLASSES)
        if unknown:
            raise ValueError(f"cannot record {unknown}: no message class for their types")
        self._store = typestore()
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self._topics = topics
        self._ended: set[str] = set()
        self._open: set[str] = set()
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)
        self._recorded = {
            topic: self.create_subscription(
                _MESSAGE_CLASSES[msgtype], topic,
                lambda raw, topic=topic: self._on_message(topic, raw),
                SENSOR_QOS if sensor else RELIABLE_QOS, raw=True,
            )
            for topic, (msgtype, sensor) in topics.items()
        }

    def _on_message(self, topic: str, raw: bytes) -> None:
        if self._writer is None:
            return
        conn = self._connections.get(topic)
        if conn is None:
            # Connections are added on the first message, so topics that never publish do not
            # appear (the converter then reports the topic as missing, by name).
            conn = self._connections[topic] = self._writer.add_connection(
                topic, self._topics[topic][0], typestore=self._store)
        self._writer.write(conn, time.time_ns(), raw)
        self.counts[topic] += 1
        if self._topics[topic][0] == "sernf_interfaces/msg/EpisodeEvent":
            from rclpy.serialization import deserialize_message

            event = deserialize_message(raw, EpisodeEvent)
            if event.event == EpisodeEvent.START:
                self._open.add(event.episode_id)
            else:
                self._open.discard(event.episode_id)
                if event.event == EpisodeEvent.END:
                    self._ended.add(event.episode_id)

    def saw_end(self, episode_id: str) -> bool:
        """True once the END event of ``episode_id`` is written into the bag."""
        return episode_id in self._ended

    def open_episodes(self) -> set[str]:
        """Episodes whose START is in the bag but neither their END nor ABORT (yet)."""
        return set(self._open)

    def unmatched_topics(self) -> list[str]:
        """Topics not yet ready to record: a stream the demonstration needs with no matched
        publisher, or any recorded topic with a publisher the graph lists that DDS has not
        matched to us yet (its first messages would be lost)."""
        return [topic for topic, sub in self._recorded.items()
                if sub.get_publisher_count() < max(self.count_publishers(topic),
                                                   int(self._topics[topic][0] in _NEEDED_TYPES))]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class EventPublisher(Node):
    """Publishes the demonstration's START / END on /sernf/episode (reliable).

    Stamped on the node's ROS clock: wall time, or with ``use_sim_time`` the simulator's
    ``/clock``, so the events lie on the same time axis as the streams they delimit (the
    converter orders everything by header stamps)."""

    def __init__(self, context: Context, use_sim_time: bool = False) -> None:
        super().__init__(f"sernf_record_events_{uuid.uuid4().hex[:8]}", context=context,
                         parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
        self._pub = self.create_publisher(EpisodeEvent, "/sernf/episode", RELIABLE_QOS)

    def publish(self, episode_id: str, kind: str, reason: str = "") -> None:
        msg = EpisodeEvent()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.episode_id = episode_id
        msg.event = EpisodeEvent.START if kind == "start" else EpisodeEvent.END
        msg.reason = reason
        self._pub.publish(msg)


def run_recording(args: argparse.Namespace, config: RecordConfig) -> int:
    """``sernf-record``'s recording loop (see :mod:`sernf_data.record`): one bag per demonstration,
    START/END events, the operator's labels in the END reason."""
    use_ros2_bag = shutil.which("ros2") is not None and not args.rosbags
    topics = demonstration_topics(config.cameras)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    events = EventPublisher(context, use_sim_time=args.use_sim_time)
    executor.add_node(events)
    try:
        for index in range(args.episodes):
            name = time.strftime("demo_%Y%m%dT%H%M%S") + f"_{index:03d}"
            bag = config.out_dir / name
            print(f"[sernf-record] demonstration {index + 1}/{args.episodes} -> {bag}", flush=True)
            recorder = None
            process = None
            if use_ros2_bag:
                qos_file = Path(tempfile.mkdtemp()) / "qos.yaml"
                qos_file.write_text(qos_override_yaml(topics))
                sim_time = ["--use-sim-time"] if args.use_sim_time else []
                process = subprocess.Popen(["ros2", "bag", "record", "-s", "mcap", "-o", str(bag), *sim_time,
                                            "--qos-profile-overrides-path", str(qos_file), *topics])
            else:
                recorder = BagRecorderNode(context, bag, topics)
                executor.add_node(recorder)
            # Wait until the publishers we record are matched, so the first seconds are kept.
            _spin_for(executor, args.settle)
            if recorder is not None and not _spin_until(executor, lambda r=recorder: not r.unmatched_topics(),
                                                        MATCH_WAIT_S):
                print(f"[sernf-record] WARNING: recording without a matched publisher on "
                      f"{recorder.unmatched_topics()} (not running, or a QoS mismatch); sernf-bag2zarr "
                      "refuses a bag without a needed stream", file=sys.stderr)
            events.publish(name, "start")
            if args.duration is not None:
                _spin_for(executor, args.duration)
            else:
                print("[sernf-record] recording; press Enter to end the demonstration", flush=True)
                _spin_until_enter(executor)
            flags = parse_label(args.label, config.subtasks) if args.label else ask_labels(config.subtasks)
            reason = format_end_reason(args.end_reason, flags, config.operator or None)
            events.publish(name, "end", reason)
            if recorder is not None:
                # Close only once our own END event is in the bag (it went through DDS).
                if not _spin_until(executor, lambda r=recorder, n=name: r.saw_end(n), 10.0):
                    print("[sernf-record] WARNING: the END event did not reach the bag", file=sys.stderr)
                if not _spin_until(executor, lambda r=recorder: not r.open_episodes(), NESTED_END_WAIT_S):
                    print(f"[sernf-record] episode(s) {sorted(recorder.open_episodes())} started during the "
                          f"recording but did not end within {NESTED_END_WAIT_S:g} s of it; the bag has their "
                          "START only", file=sys.stderr)
                executor.remove_node(recorder)
                recorder.close()
                recorder.destroy_node()
            else:
                _spin_for(executor, 1.0)
                process.send_signal(signal.SIGINT)
                process.wait(timeout=30)
            print(f"[sernf-record] saved {bag} ({reason})", flush=True)
    finally:
        executor.shutdown()
        events.destroy_node()
        rclpy.shutdown(context=context)
    return 0


def _spin_for(executor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline - time.monotonic())))


def _spin_until(executor, done: Callable[[], bool], seconds: float) -> bool:
    """Spin until ``done()`` or ``seconds`` have passed; returns ``done()``."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return done()


def _spin_until_enter(executor) -> None:
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    while not selector.select(timeout=0):
        executor.spin_once(timeout_sec=0.05)
    sys.stdin.readline()
