"""builtin_interfaces/Time ↔ float seconds."""

from __future__ import annotations

from builtin_interfaces.msg import Time

__all__ = ["seconds_to_time", "time_to_seconds"]


def time_to_seconds(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_time(seconds: float) -> Time:
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)
