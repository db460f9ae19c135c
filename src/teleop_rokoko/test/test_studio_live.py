"""Studio Live parsing on hand-written JSON v3 packets, and the receiver over real UDP."""

from __future__ import annotations

import json
import socket
import time

import lz4.frame
import numpy as np
import pytest

from teleop_rokoko.frames import STUDIO_TO_WORLD, quat_xyzw_to_matrix
from teleop_rokoko.studio_live import (
    DROP_REASONS,
    PacketError,
    StudioLiveReceiver,
    hand_bone_names,
    parse_packet,
)


def bone(x: float, y: float, z: float, q=(0.0, 0.0, 0.0, 1.0)) -> dict:
    return {"position": {"x": x, "y": y, "z": z}, "rotation": dict(zip("xyzw", q, strict=True))}


def hand_bones(side: str, offset: float) -> dict:
    """A plausible hand in Studio coordinates: bones along Studio +z (the actor's front)."""
    bones = {f"{side}Hand": bone(offset, 1.1, 0.3)}
    for k, finger in enumerate(("Thumb", "Index", "Middle", "Ring", "Little")):
        for j, phalanx in enumerate(("Proximal", "Medial", "Distal", "Tip")):
            bones[f"{side}{finger}{phalanx}"] = bone(offset + 0.02 * (k - 2), 1.1, 0.38 + 0.025 * j)
    return bones


def packet(left: bool = True, right: bool = True, actor: str = "alice", **extra) -> dict:
    body = {"hip": bone(0.0, 0.95, 0.0)}
    if left:
        body.update(hand_bones("left", 0.2))
    if right:
        body.update(hand_bones("right", -0.2))
    data = {
        "version": 3, "fps": 60,
        "scene": {"timestamp": 12.5, "props": [], "actors": [
            {"name": "bob", "meta": {"hasGloves": False, "hasLeftGlove": False, "hasRightGlove": False,
                                     "hasBody": True}, "dimensions": {}, "body": {"hip": bone(1, 1, 1)}},
            {"name": actor, "meta": {"hasGloves": left or right, "hasLeftGlove": left, "hasRightGlove": right,
                                     "hasBody": True}, "dimensions": {"totalHeight": 1.8}, "body": body},
        ]},
    }
    data.update(extra)
    return data


def encode(data: dict) -> bytes:
    return json.dumps(data).encode()


def test_both_hands_parsed_into_the_right_handed_z_up_frame() -> None:
    frame = parse_packet(encode(packet()), "alice")
    assert frame.name == "alice" and frame.timestamp == 12.5 and frame.fps == 60
    assert frame.has_left_glove and frame.has_right_glove
    for side in ("left", "right"):
        hand = frame.hand(side)
        assert hand is not None and set(hand) == set(hand_bone_names(side))
    # Studio (x=-0.2, y=1.1, z=0.3) → world (z, -x, y) = (0.3, 0.2, 1.1): Y-up becomes Z-up,
    # and the actor's right (+x in Studio) becomes -y (a right-handed frame).
    np.testing.assert_allclose(frame.bones["rightHand"].position, [0.3, 0.2, 1.1])
    assert np.linalg.det(STUDIO_TO_WORLD) == pytest.approx(-1.0)


def test_rotation_converted_as_a_proper_rotation() -> None:
    # 90 degrees about Studio's up axis (+y): in the world frame, a rotation about +z. The
    # reflection flips the sense (left-handed → right-handed), so it becomes -90 degrees.
    q = (0.0, np.sin(np.pi / 4), 0.0, np.cos(np.pi / 4))
    data = packet()
    data["scene"]["actors"][1]["body"]["rightHand"] = bone(0, 1, 0, q)
    r = parse_packet(encode(data), "alice").bones["rightHand"].rotation
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(r, STUDIO_TO_WORLD @ quat_xyzw_to_matrix(np.array(q)) @ STUDIO_TO_WORLD.T)
    np.testing.assert_allclose(r @ [1, 0, 0], [0, -1, 0], atol=1e-12)


def test_one_hand_and_no_gloves() -> None:
    only_right = parse_packet(encode(packet(left=False)), "alice")
    assert only_right.hand("right") is not None and only_right.hand("left") is None
    no_gloves = parse_packet(encode(packet(left=False, right=False)), "alice")
    assert no_gloves.hand("right") is None and no_gloves.hand("left") is None
    # Bones present but the meta says no glove: the hand is not trusted.
    data = packet()
    data["scene"]["actors"][1]["meta"]["hasRightGlove"] = False
    assert parse_packet(encode(data), "alice").hand("right") is None


def test_actor_chosen_by_name_or_first() -> None:
    assert parse_packet(encode(packet()), "").name == "bob"
    with pytest.raises(PacketError) as err:
        parse_packet(encode(packet()), "carol")
    assert err.value.reason == "actor_missing"


def test_lz4_frame_payload() -> None:
    raw = encode(packet())
    packed = lz4.frame.compress(raw)
    assert packed[:4] == b"\x04\x22\x4d\x18"
    frame = parse_packet(packed, "alice")
    assert frame.hand("right") is not None
    np.testing.assert_allclose(frame.bones["rightHand"].position, parse_packet(raw, "alice").bones["rightHand"].position)


def test_version_variants() -> None:
    for version in (3, 3.0, "3", "3,0", "3.0"):
        assert parse_packet(encode(packet(version=version)), "alice").name == "alice"
    for version in (2, 4, "two", None, True):
        with pytest.raises(PacketError) as err:
            parse_packet(encode(packet(version=version)), "alice")
        assert err.value.reason == "version"


def test_v2_style_trackers_rejected_with_a_reason() -> None:
    old = {"version": 3, "timestamp": 1.0, "actors": [], "trackers": [], "props": [], "faces": []}
    with pytest.raises(PacketError) as err:
        parse_packet(encode(old))
    assert err.value.reason == "v2_layout"


BAD = {
    "empty": b"",
    "truncated_json": encode(packet())[:300],
    "garbage": bytes(range(256)) * 2,
    "not_utf8": b"\xff\xfe{\"version\": 3}",
    "json_list": b"[1, 2, 3]",
    "truncated_lz4": lz4.frame.compress(encode(packet()))[:200],
    "lz4_magic_junk": b"\x04\x22\x4d\x18" + b"\x00" * 50,
    "oversized": encode(packet(padding="x" * 70000)),  # (above max_bytes; UDP could not carry it)
    "lz4_bomb": lz4.frame.compress(b" " * 200000),
    "no_scene": encode({"version": 3, "fps": 60}),
    "nan_position": encode(packet()).replace(b'"x": -0.2', b'"x": NaN', 1),
    "string_position": encode(packet()).replace(b'"x": -0.2', b'"x": "a"', 1),
    "zero_quaternion": encode(packet()).replace(b'"w": 1.0', b'"w": 0.0'),
    "actors_not_list": encode({"version": 3, "scene": {"timestamp": 0, "actors": {}}}),
    "meta_flag_not_bool": encode(packet()).replace(b'"hasRightGlove": true', b'"hasRightGlove": "yes"'),
    "deep_nesting": b"[" * 100000,
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_packets_raise_packet_error_only(name: str) -> None:
    with pytest.raises(PacketError) as err:
        parse_packet(BAD[name], "alice")
    assert err.value.reason in DROP_REASONS


def test_receiver_counts_drops_by_reason_and_keeps_the_last_good_frame() -> None:
    # A small size limit, so that an oversized datagram still fits UDP (65507 bytes at most).
    receiver = StudioLiveReceiver(port=0, host="127.0.0.1", actor_name="alice", max_packet_bytes=20000).start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        good = encode(packet())
        datagrams = [good, BAD["truncated_json"], BAD["garbage"], BAD["truncated_lz4"],
                     encode(packet(version=2)), encode(packet(padding="x" * 30000)), lz4.frame.compress(good), good]
        for d in datagrams:
            sender.sendto(d, ("127.0.0.1", receiver.port))
        deadline = time.monotonic() + 10.0
        while receiver.counts()["received"] < len(datagrams) and time.monotonic() < deadline:
            time.sleep(0.01)
        counts = receiver.counts()
        assert counts["received"] == len(datagrams)
        assert counts["accepted"] == 3
        assert counts["dropped_json"] == 1 and counts["dropped_encoding"] == 1  # truncated, garbage
        assert counts["dropped_lz4"] == 1 and counts["dropped_version"] == 1
        assert counts["dropped_oversized"] == 1
        frame, age = receiver.latest()
        assert frame is not None and frame.name == "alice" and age < 10.0
        assert receiver._thread.is_alive()  # noqa: SLF001 - the thread survived every bad packet
    finally:
        sender.close()
        receiver.stop()


def test_receiver_age_grows_when_the_stream_stops() -> None:
    receiver = StudioLiveReceiver(port=0, host="127.0.0.1").start()
    try:
        assert receiver.latest() == (None, float("inf")) or receiver.latest()[0] is None
        receiver.handle_datagram(encode(packet()))
        _, age0 = receiver.latest()
        time.sleep(0.15)
        _, age1 = receiver.latest()
        assert age0 < age1 and age1 >= 0.15
    finally:
        receiver.stop()
