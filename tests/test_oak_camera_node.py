"""oak_camera over real DDS, with a replayed camera in place of the OAK.

The node runs as a subprocess with ``source:=replay``: a host-side depthai pipeline serves the
recorded frames through the same queue and ImgFrame calls the device path uses, and an
"unplug" file makes it behave like a camera pulled off the USB bus (depthai closes the queue
and raises its MessageQueue.QueueException; reopening by MxId fails until it is back).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from graph_probe import GraphProbe
from lifecycle_msgs.msg import Transition
from rclpy.qos import QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from oak_camera.intrinsics import Intrinsics
from oak_camera.replay import Recording, save_recording

pytestmark = pytest.mark.ros

MXID = "14442C10D13EABCE00"
SENSOR = Intrinsics(1920, 1080, 1480.0, 1475.0, 955.3, 546.8, "rational_polynomial",
                    (0.1, -0.2, 0.001, 0.002, 0.05, 0.0, 0.0, 0.0))
SEQUENCE = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]  # 2 frames dropped by the "device" per loop
NAME = "wrist_left"
IMAGE_TOPIC = f"/cameras/{NAME}/image_raw"
INFO_TOPIC = f"/cameras/{NAME}/camera_info"


def recording(path: Path) -> Recording:
    n = len(SEQUENCE)
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
    frames[:, 0, 0, :] = np.arange(n, dtype=np.uint8)[:, None]  # frame index in the first pixel
    rec = Recording(frames, np.array(SEQUENCE), np.arange(n) / 30.0, SENSOR, MXID)
    save_recording(path, rec)
    return rec


class Graph(GraphProbe):
    def __init__(self, node_name: str) -> None:
        super().__init__("oak_test", lifecycle_node=node_name)
        self.images: list[Image] = []
        self.infos: list[CameraInfo] = []
        self.diagnostics: list[DiagnosticArray] = []
        n = self.node
        n.create_subscription(Image, IMAGE_TOPIC, self.images.append, qos_profile_sensor_data)
        n.create_subscription(CameraInfo, INFO_TOPIC, self.infos.append, qos_profile_sensor_data)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def camera_status(self):
        """The latest diagnostics status of this camera, as (level, message, values)."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name == f"oak_camera: {NAME}":
                    return status.level, status.message, {kv.key: kv.value for kv in status.values}
        return None


@pytest.fixture
def graph(ros_env):
    g = Graph("oak_wrist_left")
    yield g
    g.close()


def start_camera(processes, tmp_path: Path, *extra: str):
    return processes.python(
        "oak_camera", "-m", "oak_camera.oak_camera_node", "--ros-args", "-r", "__node:=oak_wrist_left",
        "-p", f"camera_name:={NAME}", "-p", f"serial:={MXID}", "-p", "source:=replay",
        "-p", f"replay_file:={tmp_path / 'rec.npz'}", "-p", f"replay_unplug_file:={tmp_path / 'unplugged'}",
        "-p", "fps:=20.0", "-p", "reconnect_initial_s:=0.2", "-p", "reconnect_max_s:=0.8",
        "-p", "diagnostics_period_s:=0.25", *extra)


def test_camera_node_publishes_images_and_camera_info(processes, graph, tmp_path):
    rec = recording(tmp_path / "rec.npz")
    g = graph
    proc = start_camera(processes, tmp_path)
    assert g.transition(Transition.TRANSITION_CONFIGURE), processes.log(proc)
    assert g.state() == "inactive"
    g.spin_for(0.5)
    assert not g.images, "published before activate"
    assert g.transition(Transition.TRANSITION_ACTIVATE), processes.log(proc)
    assert g.spin_until(lambda: len(g.images) >= 25 and len(g.infos) >= 25, 30.0), processes.log(proc)

    # image content: each message is one recorded frame, bit for bit, as rgb8
    for msg in g.images[:25]:
        assert (msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian) == (224, 224, "rgb8", 672, 0)
        assert msg.header.frame_id == f"{NAME}_optical_frame"
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(224, 224, 3)
        np.testing.assert_array_equal(pixels, rec.frames[pixels[0, 0, 0]])
    # stamps: capture times mapped to ROS time (close to now, increasing, ~1/fps apart)
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in g.images])
    assert np.all(np.diff(stamps) > 0)
    assert abs(stamps[-1] - time.time()) < 5.0
    assert np.median(np.diff(stamps)) == pytest.approx(0.05, abs=0.02)

    # camera_info: the calibration corrected for the centred 1080x1080 crop and 224 resize
    info = g.infos[-1]
    s = 224 / 1080
    assert (info.width, info.height, info.distortion_model) == (224, 224, "rational_polynomial")
    np.testing.assert_allclose(info.k, [1480 * s, 0, (955.3 - 420) * s, 0, 1475 * s, 546.8 * s, 0, 0, 1], rtol=1e-9)
    np.testing.assert_allclose(info.d, SENSOR.distortion)
    np.testing.assert_allclose(info.r, np.eye(3).ravel())
    np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], np.reshape(info.k, (3, 3)))
    image_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in g.images}
    assert (info.header.stamp.sec, info.header.stamp.nanosec) in image_stamps
    assert info.header.frame_id == f"{NAME}_optical_frame"

    # sensor-data QoS (best effort) on both topics
    for topic in (IMAGE_TOPIC, INFO_TOPIC):
        pubs = g.node.get_publishers_info_by_topic(topic)
        assert len(pubs) == 1 and pubs[0].qos_profile.reliability == QoSReliabilityPolicy.BEST_EFFORT

    # diagnostics: rate near 20 Hz, the device's dropped frames counted, latency reported
    assert g.spin_until(lambda: (st := g.camera_status()) is not None and int(st[2]["frames"]) >= 30, 20.0)
    level, message, values = g.camera_status()
    assert values["stream"] == "streaming" and values["publishing"] == "true"
    assert int(values["dropped_frames"]) >= 2 * (int(values["frames"]) // len(SEQUENCE))
    assert float(values["rate_hz"]) > 5.0
    assert float(values["latency_p50_ms"]) >= 0.0
    assert values["device"].startswith("replay of")

    # deactivate: publishing stops, the camera keeps streaming (diagnostics say so)
    assert g.transition(Transition.TRANSITION_DEACTIVATE)
    g.spin_for(0.5)
    count = len(g.images)
    g.spin_for(1.0)
    assert len(g.images) == count
    assert g.spin_until(lambda: g.camera_status()[2].get("publishing") == "false", 10.0)
    assert g.camera_status()[2]["stream"] == "streaming"
    assert g.transition(Transition.TRANSITION_ACTIVATE)
    assert g.spin_until(lambda: len(g.images) >= count + 5, 20.0)

    assert g.transition(Transition.TRANSITION_DEACTIVATE)
    assert g.transition(Transition.TRANSITION_CLEANUP)
    assert g.state() == "unconfigured"
    assert "cleanup: camera closed" in processes.log(proc)


def test_camera_node_refuses_a_missing_camera_and_reconnects_after_unplug(processes, graph, tmp_path):
    recording(tmp_path / "rec.npz")
    unplugged = tmp_path / "unplugged"
    unplugged.touch()
    g = graph
    proc = start_camera(processes, tmp_path)
    # configure refused while the camera is missing, with the reason in log and diagnostics
    assert not g.transition(Transition.TRANSITION_CONFIGURE)
    assert g.state() == "unconfigured"
    assert f"configure refused: no OAK with MxId {MXID} connected" in processes.log(proc)
    assert g.spin_until(lambda: (st := g.camera_status()) is not None and st[0] == b"\x02", 10.0)
    assert "configure refused" in g.camera_status()[1]

    unplugged.unlink()
    assert g.transition(Transition.TRANSITION_CONFIGURE), processes.log(proc)
    assert g.transition(Transition.TRANSITION_ACTIVATE), processes.log(proc)
    assert g.spin_until(lambda: len(g.images) >= 10, 30.0), processes.log(proc)

    # unplug: ERROR diagnostics with the reason, logged; nothing published
    unplugged.touch()
    assert g.spin_until(lambda: (st := g.camera_status()) is not None and st[0] == b"\x02", 15.0), processes.log(proc)
    level, message, values = g.camera_status()
    assert f"camera {MXID} lost" in message
    assert values["stream"] == "lost" and int(values["disconnects"]) == 1
    assert g.spin_until(lambda: int(g.camera_status()[2].get("reconnect_attempts", "0")) >= 2, 15.0)
    assert "reopen failed: no OAK with MxId" in g.camera_status()[1]
    log = processes.log(proc)
    assert f"camera {MXID} lost (QueueException: MessageQueue was closed); reconnecting" in log
    g.spin_for(0.3)
    count = len(g.images)
    g.spin_for(1.0)
    assert len(g.images) == count
    assert g.state() == "active"  # the node stays active and waits for the camera

    # plugged back: publishing resumes by itself, diagnostics OK again
    unplugged.unlink()
    assert g.spin_until(lambda: len(g.images) >= count + 10, 30.0), processes.log(proc)
    assert g.spin_until(lambda: (st := g.camera_status()) is not None and st[0] == b"\x00"
                        and st[2]["stream"] == "streaming", 15.0), g.camera_status()
    assert int(g.camera_status()[2]["reconnects"]) == 1
    assert f"camera {MXID} back" in processes.log(proc)
