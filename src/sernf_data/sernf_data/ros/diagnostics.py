"""`/diagnostics` messages (diagnostic_msgs/DiagnosticArray) from plain values."""

from __future__ import annotations

from collections.abc import Mapping

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["diagnostic_array", "diagnostic_status"]


def diagnostic_status(
    name: str, hardware_id: str, level: bytes, message: str, values: Mapping[str, object]
) -> DiagnosticStatus:
    """One DiagnosticStatus; ``level`` is ``DiagnosticStatus.OK`` / ``WARN`` / ``ERROR`` /
    ``STALE``; values are stringified (floats with %.6g, bools as true/false)."""
    status = DiagnosticStatus()
    status.level = level
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = f"{value:.6g}"
        else:
            text = str(value)
        status.values.append(KeyValue(key=key, value=text))
    return status


def diagnostic_array(
    stamp: Time, name: str, hardware_id: str, level: bytes, message: str, values: Mapping[str, object]
) -> DiagnosticArray:
    """One DiagnosticStatus (see ``diagnostic_status``) in a DiagnosticArray."""
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status.append(diagnostic_status(name, hardware_id, level, message, values))
    return array
