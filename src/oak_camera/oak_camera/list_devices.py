"""`ros2 run oak_camera list_devices`: the OAKs on this machine with their MxIds (the ``serial``
parameter of oak_camera), USB port and state."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import depthai as dai

__all__ = ["describe_devices", "main"]


def describe_devices(devices: Sequence[dai.DeviceInfo]) -> list[str]:
    if not devices:
        return ["no OAK found (check the USB cable and the udev rule: docs/robot/cameras.md)"]
    lines = [f"{'MxId (serial)':<22} {'USB port':<12} state"]
    for d in sorted(devices, key=lambda d: d.getDeviceId()):
        state = d.state.name.removeprefix("X_LINK_").lower()
        note = "  (in use by another process)" if d.state == dai.XLinkDeviceState.X_LINK_BOOTED else ""
        lines.append(f"{d.getDeviceId():<22} {d.name:<12} {state}{note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    print("\n".join(describe_devices(dai.Device.getAllConnectedDevices())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
