"""recorder: the graph's recording node: one MCAP bag per episode, delimited by /sernf/episode.

``sernf-record`` is the operator's interactive recorder (it starts and ends each demonstration
itself and asks for the labels). In a launched graph nobody types into a node, so this node
records whatever episodes the graph runs: it subscribes to the demonstration topics
(:func:`sernf_data.record.demonstration_topics`) all the time, opens a bag
``<out_dir>/<episode id>`` on an episode's START and closes it after that episode's END or
ABORT, both written into the bag (``sernf-bag2zarr`` reads episode boundaries and labels from
them). Messages between episodes are not written. START/END are accepted only from
``episode_authorities`` (the policy, the labeling tool's live page, the simulated world); the
node's own ``~/start_episode`` / ``~/end_episode`` services (std_srvs/Trigger) publish them for
teleoperated demonstrations, which the operator labels afterwards with ``sernf-label``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from std_srvs.srv import Trigger

from sernf_data.bag_types import typestore
from sernf_data.record import RecordConfig, demonstration_topics
from sernf_data.recorder_node import _MESSAGE_CLASSES, RELIABLE_QOS, SENSOR_QOS
from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.sender_identity import SenderGate
from sernf_data.ros.spin import spin_node
from sernf_interfaces.msg import EpisodeEvent

__all__ = ["EpisodeBagRecorderConfig", "EpisodeBagRecorderNode", "main"]

_EVENT_NAMES = {EpisodeEvent.START: "START", EpisodeEvent.END: "END", EpisodeEvent.ABORT: "ABORT"}


@dataclass(frozen=True)
class EpisodeBagRecorderConfig:
    """Parameters of the recorder node (declared as ROS parameters with these defaults)."""

    out_dir: str = "bags"
    """Directory that receives one bag directory per episode (created if missing)."""
    cameras: tuple[str, ...] = ("front", "under", "left")
    """Camera names: /cameras/<name>/image_raw and /cameras/<name>/camera_info are recorded."""
    episode_authorities: tuple[str, ...] = ()
    """Fully qualified names of the nodes whose START/END/ABORT count (besides this node's own
    services); empty: any publisher (only for a graph you fully control)."""
    max_episode_s: float = 120.0
    """A bag whose episode has not ended after this long is closed (a lost END must not record
    forever); bag2zarr then reports the episode as incomplete."""
    diagnostics_period_s: float = 1.0
    """Period of the /diagnostics status."""
    sender_discovery_timeout_s: float = 5.0
    """An episode event whose sending node DDS discovery has not named yet waits this long (in
    order, with later events) before it is refused as from an unknown publisher."""

    def __post_init__(self) -> None:
        RecordConfig(out_dir=Path(self.out_dir), cameras=tuple(self.cameras))  # validates the camera names
        if not self.out_dir:
            raise ValueError("out_dir must not be empty")
        for name in ("max_episode_s", "diagnostics_period_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        # 0 is allowed (as in the policy node): refuse at once whatever discovery has not named.
        if not float(self.sender_discovery_timeout_s) >= 0:
            raise ValueError(f"sender_discovery_timeout_s must be >= 0, got {self.sender_discovery_timeout_s}")


PARAMETERS = EpisodeBagRecorderConfig


def bag_name(episode_id: str) -> str:
    """A directory name for an episode id (ids come from the network: no path tricks)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", episode_id).strip(".")[:120]
    return name or time.strftime("episode_%Y%m%dT%H%M%S")


class EpisodeBagRecorderNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("recorder", **kwargs)
        self.cfg: EpisodeBagRecorderConfig = declare_config(self, EpisodeBagRecorderConfig)
        self.out_dir = Path(self.cfg.out_dir).expanduser()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._topics = demonstration_topics(self.cfg.cameras)
        self._store = typestore()
        self._writer: Any = None
        self._episode_id = ""
        self._bag: Path | None = None
        self._opened_at = 0.0
        self._connections: dict[str, Any] = {}
        self.saved: list[str] = []
        self.refused = 0
        self.last_refusal = ""
        self._episode_topic = "/sernf/episode"
        self._event_pub = self.create_publisher(EpisodeEvent, self._episode_topic, RELIABLE_QOS)
        self._episode_gate = SenderGate(self, self._episode_topic, self._on_episode_event,
                                        timeout_s=self.cfg.sender_discovery_timeout_s,
                                        check=bool(self.cfg.episode_authorities))
        for topic, (msgtype, sensor) in self._topics.items():
            self.create_subscription(_MESSAGE_CLASSES[msgtype], topic,
                                     lambda raw, info, topic=topic: self._on_message(topic, raw, info),
                                     SENSOR_QOS if sensor else RELIABLE_QOS, raw=True)
        self.create_service(Trigger, "~/start_episode", self._start_service)
        self.create_service(Trigger, "~/end_episode", self._end_service)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.cfg.diagnostics_period_s, self._on_timer)
        self.create_timer(0.05, self._episode_gate.retry)  # one thread: never at once with admit
        self.get_logger().info(f"recording episodes into {self.out_dir} (one bag per START..END)")

    # -- recording --------------------------------------------------------------------------
    def _on_message(self, topic: str, raw: bytes, info: Any) -> None:
        if topic == self._episode_topic:
            self._episode_gate.admit(raw, info)
        elif self._writer is not None:
            self._write(topic, raw)

    def _write(self, topic: str, raw: bytes) -> None:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._connections[topic] = self._writer.add_connection(
                topic, self._topics[topic][0], typestore=self._store)
        self._writer.write(conn, time.time_ns(), raw)

    def _on_episode_event(self, raw: bytes, sender: str) -> None:
        try:
            event = deserialize_message(raw, EpisodeEvent)
        except (RuntimeError, ValueError, TypeError) as exc:  # rclpy: RCLError (a RuntimeError)
            self._refuse(f"undecodable episode event: {exc}")
            return
        kind = _EVENT_NAMES.get(event.event)
        if kind is None:
            self._refuse(f"episode event of unknown kind {event.event} for {event.episode_id!r}")
            return
        if (self.cfg.episode_authorities and sender != self.get_fully_qualified_name()
                and sender not in self.cfg.episode_authorities):
            self._refuse(f"{kind} for {event.episode_id!r} from {sender or 'an unknown publisher'}, "
                         f"not among episode_authorities {list(self.cfg.episode_authorities)}")
            return
        if kind == "START":
            if self._writer is not None:
                self.get_logger().warning(f"START of {event.episode_id!r} while {self._episode_id!r} is recording: "
                                          "closing that bag without its END")
                self._close("interrupted by the next START")
            self._open(str(event.episode_id))
            self._write(self._episode_topic, raw)
        elif self._writer is not None and event.episode_id == self._episode_id:
            self._write(self._episode_topic, raw)
            self._close(f"{kind} ({event.reason})")

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.last_refusal = why
        self.get_logger().warning(f"episode event refused: {why}", throttle_duration_sec=2.0)

    def _open(self, episode_id: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        bag = self.out_dir / bag_name(episode_id)
        suffix = 1
        while bag.exists():  # an id seen before (a restarted policy): never overwrite a bag
            bag = self.out_dir / f"{bag_name(episode_id)}_{suffix}"
            suffix += 1
        self._writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections = {}
        self._episode_id, self._bag, self._opened_at = episode_id, bag, time.monotonic()
        self.get_logger().info(f"episode {episode_id!r}: recording into {bag}")

    def _close(self, why: str) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        self.saved.append(str(self._bag))
        self.get_logger().info(f"episode {self._episode_id!r}: saved {self._bag} ({why})")
        self._episode_id, self._bag = "", None

    def _on_timer(self) -> None:
        if self._writer is not None and time.monotonic() - self._opened_at > self.cfg.max_episode_s:
            self.get_logger().error(f"episode {self._episode_id!r} has not ended after {self.cfg.max_episode_s:g} s: "
                                    "closing its bag (truncated)")
            self._close("no END within max_episode_s")
        level = DiagnosticStatus.WARN if self.last_refusal else DiagnosticStatus.OK
        message = (f"recording {self._episode_id}" if self._writer is not None else "idle") + (
            f"; last refusal: {self.last_refusal}" if self.last_refusal else "")
        self._diagnostics.publish(diagnostic_array(
            self.get_clock().now().to_msg(), f"{self.get_name()}: recorder", str(self.out_dir), level, message,
            {"recording": self._writer is not None, "episode_id": self._episode_id, "bags_saved": len(self.saved),
             "events_refused": self.refused,
             # events that had to wait for DDS discovery to name their sender, and those waiting now
             "events_held_for_sender_discovery": self._episode_gate.held,
             "events_awaiting_sender_discovery": self._episode_gate.pending}))

    # -- the operator's services (teleoperated demonstrations) --------------------------------
    def _publish_event(self, episode_id: str, kind: int, reason: str = "") -> None:
        msg = EpisodeEvent(episode_id=episode_id, event=kind, reason=reason)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._event_pub.publish(msg)

    def _start_service(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._writer is not None:
            response.success, response.message = False, f"episode {self._episode_id!r} is recording; end it first"
            return response
        episode_id = time.strftime("demo_%Y%m%dT%H%M%S")
        self._publish_event(episode_id, EpisodeEvent.START)
        response.success, response.message = True, f"started {episode_id}"
        return response

    def _end_service(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._writer is None:
            response.success, response.message = False, "no episode is recording"
            return response
        self._publish_event(self._episode_id, EpisodeEvent.END, "operator")
        response.success, response.message = True, f"ended {self._episode_id}"
        return response

    def shutdown_workers(self) -> None:
        """Process exit: close the open bag so that what was recorded is readable."""
        self._close("recorder shutting down")


def main(args: list[str] | None = None) -> None:
    spin_node(EpisodeBagRecorderNode, "recorder", num_threads=1, args=args)


if __name__ == "__main__":
    main()
