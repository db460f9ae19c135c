"""`ros2 run oak_camera record`: record frames from an OAK (as oak_camera would publish them)
into a replay file, e.g. to reproduce a camera problem or test perception code off the robot:

    ros2 run oak_camera record --serial 14442C10D13EABCE00 --frames 150 front.npz
    ros2 run oak_camera oak_camera --ros-args -p source:=replay -p replay_file:=front.npz

The file keeps the device's sequence numbers (its dropped frames stay visible), the device
timestamps and the calibration at the sensor size.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from oak_camera.config import OakCameraConfig
from oak_camera.device import CameraConnection, OakDeviceConnection
from oak_camera.frames import frame_to_array
from oak_camera.replay import Recording, save_recording

__all__ = ["main", "record"]


def record(connect: Callable[[], CameraConnection], n_frames: int, frame_timeout_s: float = 2.0) -> Recording:
    """Open a camera, take ``n_frames`` frames off its queue, close it."""
    if n_frames <= 0:
        raise ValueError("n_frames must be positive")
    connection = connect()
    frames, sequence, device_time = [], [], []
    try:
        connection.start()
        last = time.monotonic()
        while len(frames) < n_frames:
            frame = connection.next_frame(0.1)
            if frame is None:
                if time.monotonic() - last > frame_timeout_s:
                    raise RuntimeError(f"no frame for {frame_timeout_s} s after {len(frames)} frames")
                continue
            last = time.monotonic()
            image, order = frame_to_array(frame)
            frames.append(image if order == "rgb" else image[..., ::-1])
            sequence.append(int(frame.getSequenceNum()))
            device_time.append(frame.getTimestampDevice().total_seconds())
    finally:
        connection.close()
    return Recording(np.stack(frames), np.array(sequence, dtype=np.int64), np.array(device_time),
                     connection.sensor_intrinsics, connection.device_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="replay file to write (.npz)")
    parser.add_argument("--serial", default="", help="MxId (empty: the only OAK connected)")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--sensor-width", type=int, default=1920)
    parser.add_argument("--sensor-height", type=int, default=1080)
    parser.add_argument("--board-socket", default="CAM_A")
    args = parser.parse_args(argv)
    try:
        cfg = OakCameraConfig(serial=args.serial, fps=args.fps, width=args.width, height=args.height,
                              sensor_width=args.sensor_width, sensor_height=args.sensor_height,
                              board_socket=args.board_socket)
        rec = record(lambda: OakDeviceConnection(cfg), args.frames)
    except (ValueError, RuntimeError) as exc:
        print(f"record: {exc}", file=sys.stderr)
        return 1
    save_recording(args.output, rec)
    gaps = int(np.sum(np.diff(rec.sequence) - 1)) if len(rec.sequence) > 1 else 0
    print(f"{len(rec.frames)} frames from {rec.device_id} ({gaps} dropped on the way) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
