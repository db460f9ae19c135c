"""sim_world: the simulated physical world behind every device boundary (``sim:=true``).

One process runs the MuJoCo hand pick-and-place world in real time (wall clock × ``speed``) and
answers the real drivers the way the hardware does (docs/design.md §8), so ``orca_hand_driver``,
``franka_bridge``, the policy, the recorder and the learner run unchanged:

* **ORCA hand**: a simulated Dynamixel bus on a pty, reachable at the symlink ``bus_link`` (the
  driver's ``port``); its servos are the world's finger actuators (``sernf_sim.sim_world``).
  With ``calibration_file`` the world writes the hand's calibration for the driver.
* **Franka arm**: franka's Cartesian impedance controller interface (equilibrium in, measured
  pose out, error flag, error-recovery action; ``sernf_sim.ros.franka_controller``, shared with
  sim_arm_node); the equilibrium drives the hand's weld, the world's impedance.
* **Cameras**: ``<camera_topic_prefix>/<name>/image_raw`` (sensor_msgs/Image, rgb8) and
  ``camera_info`` (pinhole intrinsics from the MuJoCo camera's fovy) for each of ``cameras``,
  sensor-data QoS, ``camera_rate_hz`` (simulated time), as the OAK camera nodes publish them.
* **The task**: episodes START/END (with the reason) on ``/sernf/episode`` and sparse rewards
  (subtasks grasp, place) on ``/sernf/reward``, as sim_robot_node announces them; ``~/reset``
  (std_srvs/Trigger) starts an episode on the layout ``reset_config`` now.

Fault injection (test hooks, used by the whole-system test):

* ``~/inject_servo_overload`` (std_srvs/Trigger): latches an overload in servo
  ``overload_servo_id`` (a run-time parameter): torque off, goals refused until the driver
  reboots it, as a real XC330 at its strength limit;
* ``~/inject_reflex`` (std_srvs/Trigger): a Franka reflex: the arm holds where it is and
  reports an error until the bridge's error recovery;
* ``~/set_camera_stream`` (std_srvs/SetBool): false stops the stream of camera
  ``camera_stream_hook`` (a run-time parameter; empty: every camera): no images, no
  camera_info, as an unplugged camera; true restarts it;
* ``~/set_pose_stream`` (std_srvs/SetBool): stops/restarts the arm's state broadcaster;
* ``~/status`` (std_srvs/Trigger): the counters as JSON.

``/diagnostics`` reports the real-time factor the world keeps, the episodes and the faults.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import SetBool, Trigger

from orca_hand_driver.hand_model import load_hand_model
from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node
from sernf_interfaces.msg import EpisodeEvent
from sernf_sim.ros.franka_controller import FrankaControllerServer
from sernf_sim.ros.task_events import TaskEventPublisher
from sernf_sim.sim_world import (
    SimWorld,
    SimWorldConfig,
    WorldEvent,
    create_bus_link,
    remove_bus_link,
    write_driver_calibration,
)

__all__ = ["SimWorldNode"]

_EPISODE_EVENTS = {"start": EpisodeEvent.START, "end": EpisodeEvent.END, "abort": EpisodeEvent.ABORT}


def _default_hand_model_file() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("orca_hand_driver")) / "config" / "orca_v1_right.yaml"


class SimWorldNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_world")
        self.cfg: SimWorldConfig = declare_config(self, SimWorldConfig,
                                                  dynamic=("reset_config", "auto_reset", "overload_servo_id",
                                                           "camera_stream_hook"))
        model_path = Path(self.cfg.hand_model_file) if self.cfg.hand_model_file else _default_hand_model_file()
        hand = load_hand_model(model_path)
        if self.cfg.calibration_file:
            self.get_logger().info(write_driver_calibration(
                self.cfg.calibration_file, hand, self.cfg.motor_lower_ticks, self.cfg.motor_upper_ticks))
        self.world = SimWorld(self.cfg, list(hand.joints))
        try:
            self.link = create_bus_link(self.cfg.bus_link, self.world.bus.port)
        except FileExistsError as exc:
            self.world.close()
            raise ValueError(str(exc)) from exc
        self._closed = False
        self.controller = FrankaControllerServer(self, self.cfg, self.world.arm)
        self.events = TaskEventPublisher(self)
        prefix = self.cfg.camera_topic_prefix.rstrip("/")
        self.image_pubs = {name: self.create_publisher(Image, f"{prefix}/{name}/image_raw", qos_profile_sensor_data)
                           for name in self.cfg.cameras}
        self.info_pubs = {name: self.create_publisher(CameraInfo, f"{prefix}/{name}/camera_info",
                                                      qos_profile_sensor_data)
                          for name in self.cfg.cameras}
        self.stopped_cameras: set[str] = set()
        self.frames_published = 0
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/inject_servo_overload", self._on_inject_servo_overload)
        self.create_service(SetBool, "~/set_camera_stream", self._on_set_camera_stream)
        self.create_service(Trigger, "~/status", self._on_status)
        # Physics and cameras run on the steady clock: the world is a time source of its own.
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._last_tick: float | None = None
        self._wall_in_period = 0.0
        self._sim_in_period = 0.0
        self.real_time_factor = 0.0
        self._worst_tick_s = 0.0
        self.create_timer(self.cfg.physics_period_s, self._physics_tick, clock=self._steady)
        self.create_timer(1.0 / (self.cfg.camera_rate_hz * self.cfg.speed), self._camera_tick, clock=self._steady)
        self.create_timer(self.cfg.diagnostics_period_s, self._publish_diagnostics, clock=self._steady)
        mapped = self.world.servo_map
        self.get_logger().info(
            f"simulated world up ({self.cfg.variant}, speed {self.cfg.speed:g}): ORCA bus "
            f"{self.cfg.bus_link} -> {self.world.bus.port} ({len(mapped.servo_names)} servos of {hand.name}, "
            f"{int(mapped.mapped.sum())} on simulated joints"
            + (f", first-order: {mapped.free_servos}" if mapped.free_servos else "")
            + f"); arm: {self.controller.describe()}; cameras {list(self.cfg.cameras)} at "
            f"{self.cfg.camera_rate_hz:g} Hz, {self.cfg.image_size} px; "
            + (f"first episode in {self.cfg.first_episode_after_s:g} s" if self.cfg.first_episode_after_s >= 0
               else "call ~/reset to start"))

    # -- physics ----------------------------------------------------------------------------------
    def _physics_tick(self) -> None:
        now = time.monotonic()
        wall_dt = self.cfg.physics_period_s if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        self.world.auto_reset = bool(self.get_parameter("auto_reset").value)
        self.world.reset_config = int(self.get_parameter("reset_config").value)
        sim_before = self.world.counters.sim_time
        events = self.world.advance(wall_dt * self.cfg.speed)
        self._wall_in_period += wall_dt
        self._sim_in_period += self.world.counters.sim_time - sim_before
        self._worst_tick_s = max(self._worst_tick_s, time.monotonic() - now)
        self.controller.publish_pose(*self.world.arm.measured_base())
        self._announce(events)

    def _announce(self, events: list[WorldEvent]) -> None:
        stamp = self.get_clock().now().to_msg()
        for event in events:
            if event.kind == "reward":
                self.events.reward(stamp, event.value, event.subtask)
                self.get_logger().info(f"episode {event.episode_id}: reward {event.value:g} ({event.subtask})")
            else:
                self.events.episode(stamp, event.episode_id, _EPISODE_EVENTS[event.kind], event.reason)
                self.get_logger().info(f"episode {event.episode_id}: {event.kind} ({event.reason})")

    # -- cameras ----------------------------------------------------------------------------------
    def _camera_tick(self) -> None:
        for name in self.cfg.cameras:
            if name in self.stopped_cameras:
                continue
            pixels = self.world.render(name)
            stamp = self.get_clock().now().to_msg()
            image = Image()
            image.header.stamp = stamp
            image.header.frame_id = f"{name}_optical_frame"
            image.height, image.width = pixels.shape[:2]
            image.encoding = "rgb8"
            image.step = image.width * 3
            image.data = pixels.tobytes()
            self.image_pubs[name].publish(image)
            model = self.world.intrinsics[name]
            info = CameraInfo()
            info.header = image.header
            info.width, info.height = model.width, model.height
            info.distortion_model = "plumb_bob"
            info.d = [0.0] * 5
            info.k = model.k
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.p = model.p
            self.info_pubs[name].publish(info)
            self.frames_published += 1

    # -- hooks ------------------------------------------------------------------------------------
    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        events = self.world.start_episode(int(self.get_parameter("reset_config").value))
        self._announce(events)
        response.success = True
        response.message = f"episode {events[-1].episode_id} started ({events[-1].reason})"
        return response

    def _on_inject_servo_overload(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        servo = int(self.get_parameter("overload_servo_id").value)
        try:
            self.world.inject_servo_overload(servo)
        except ValueError as exc:
            self.get_logger().warning(f"servo overload not injected: {exc}")
            response.success = False
            response.message = str(exc)
            return response
        self.get_logger().warning(f"servo {servo} overloaded (hardware error latched, torque off until reboot)")
        response.success = True
        response.message = f"servo {servo} overloaded"
        return response

    def _on_set_camera_stream(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        hook = str(self.get_parameter("camera_stream_hook").value)
        if hook and hook not in self.cfg.cameras:
            response.success = False
            response.message = f"camera_stream_hook {hook!r} is not one of the cameras {list(self.cfg.cameras)}"
            self.get_logger().warning(f"camera stream unchanged: {response.message}")
            return response
        names = {hook} if hook else set(self.cfg.cameras)
        if request.data:
            self.stopped_cameras -= names
        else:
            self.stopped_cameras |= names
        self.get_logger().warning(f"camera streams {sorted(names)} {'restarted' if request.data else 'stopped'}")
        response.success = True
        response.message = f"stopped cameras: {sorted(self.stopped_cameras)}"
        return response

    def _counters(self) -> dict[str, object]:
        c = self.world.counters
        return {
            "sim_time_s": round(c.sim_time, 4),
            "real_time_factor": round(self.real_time_factor, 3),
            "episode_id": self.world.book.episode_id,
            "episode_running": self.world.book.running,
            "episodes_started": c.episodes_started,
            "episodes_ended": c.episodes_ended,
            "end_reasons": dict(c.end_reasons),
            "rewards": c.rewards,
            "control_steps": c.control_steps,
            "servo_overloads_injected": c.servo_overloads_injected,
            "servo_reboots": len(self.world.bus.reboots),
            "stopped_cameras": sorted(self.stopped_cameras),
            "frames_published": self.frames_published,
            "arm": self.controller.counters(),
        }

    def _on_status(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = True
        response.message = json.dumps(self._counters())
        return response

    def _publish_diagnostics(self) -> None:
        if self._wall_in_period > 0:
            self.real_time_factor = self._sim_in_period / self._wall_in_period
        behind = self.real_time_factor < 0.9 * self.cfg.speed
        self._wall_in_period = self._sim_in_period = 0.0
        values = {k: v for k, v in self._counters().items() if k != "arm"}
        values["worst_physics_tick_s"] = round(self._worst_tick_s, 4)
        values["arm_error"] = self.world.arm.error
        self._worst_tick_s = 0.0
        level = DiagnosticStatus.WARN if behind or self.stopped_cameras else DiagnosticStatus.OK
        message = (f"behind real time ({self.real_time_factor:.2f} of speed {self.cfg.speed:g})" if behind
                   else f"cameras stopped: {sorted(self.stopped_cameras)}" if self.stopped_cameras else "ok")
        self.diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), "sim_world", "sim_world",
                                               level, message, values))

    # -- shutdown ---------------------------------------------------------------------------------
    def shutdown_workers(self) -> None:
        """Hang up the bus and remove our symlink (spin_node calls this on the way out)."""
        if self._closed:
            return
        self._closed = True
        remove_bus_link(self.link, self.world.bus.port)
        self.world.close()


#: The node's parameters: exactly the fields of this dataclass.
PARAMETERS = SimWorldConfig


def main(args: list[str] | None = None) -> None:
    spin_node(SimWorldNode, "sim_world", num_threads=1, args=args)


if __name__ == "__main__":
    main()
