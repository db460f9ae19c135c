"""The rosbags typestore for our bags: the ROS 2 Kilted standard messages plus the
``sernf_interfaces`` messages, read from their installed ``.msg`` definitions (so the bag
carries the same definitions the nodes use, and ``AnyReader`` can read them back anywhere).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["SERNF_MESSAGES", "interface_msg_dir", "typestore"]

#: Our message types that appear in demonstration bags.
SERNF_MESSAGES = ("EpisodeEvent", "RewardEvent")


def interface_msg_dir() -> Path:
    """``share/sernf_interfaces/msg`` of the built workspace (AMENT_PREFIX_PATH)."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        candidate = Path(prefix) / "share" / "sernf_interfaces" / "msg"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "sernf_interfaces is not on AMENT_PREFIX_PATH (build the workspace and `source env.sh`)"
    )


@cache
def typestore() -> Any:
    """A rosbags ``Typestore`` with the standard messages and ``sernf_interfaces/msg/*``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    msg_dir = interface_msg_dir()
    for name in SERNF_MESSAGES:
        types.update(get_types_from_msg((msg_dir / f"{name}.msg").read_text(), f"sernf_interfaces/msg/{name}"))
    store.register(types)
    return store
