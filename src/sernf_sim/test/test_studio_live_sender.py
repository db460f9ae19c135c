"""Studio Live stand-in: recording, replay over UDP, LZ4, dropouts and malformed datagrams."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import lz4.frame
import numpy as np

from sernf_sim import studio_live_sender as sender


def receive_all(sock: socket.socket) -> list[bytes]:
    out = []
    sock.settimeout(0.5)
    try:
        while True:
            out.append(sock.recv(70000))
    except TimeoutError:
        return out


def is_v3_packet(datagram: bytes) -> bool:
    try:
        data = json.loads(datagram)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("version") == 3 and "scene" in data


def test_write_then_replay_over_udp(tmp_path: Path) -> None:
    recording = tmp_path / "session.jsonl"
    sender.main(["--write-jsonl", str(recording), "--duration", "0.5", "--rate", "60", "--script", "cycle"])
    lines = recording.read_text().splitlines()
    assert len(lines) == 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        tx = sender.StudioLiveSender(port=sock.getsockname()[1], rate_hz=200.0, compress=True)
        tx.run(sender.replay_packets(recording, loop=False))
        tx.close()
        datagrams = receive_all(sock)
    assert len(datagrams) == 30
    packets = [json.loads(lz4.frame.decompress(d)) for d in datagrams]
    assert packets == [json.loads(line) for line in lines]
    actor = packets[0]["scene"]["actors"][0]
    assert packets[0]["version"] == 3 and actor["meta"]["hasRightGlove"]
    assert "rightIndexTip" in actor["body"] and "leftThumbProximal" in actor["body"]


def test_skeleton_is_consistent_and_the_pinch_closes() -> None:
    bones = sender.hand_bones(sender.hand_pose("pinch"), np.zeros(3), np.eye(3))
    assert np.linalg.norm(bones["rightThumbTip"][0] - bones["rightIndexTip"][0]) < 2e-3
    # Each bone's head lies along its parent's x axis at the phalanx length (positions agree
    # with rotations), and every rotation is proper.
    for finger, lengths in sender._FINGER_LENGTHS.items():
        chain = [f"right{finger}{p}" for p in ("Proximal", "Medial", "Distal", "Tip")]
        for parent, child, length in zip(chain[:-1], chain[1:], lengths, strict=True):
            p_pos, p_rot = bones[parent]
            np.testing.assert_allclose(bones[child][0], p_pos + p_rot @ [length, 0, 0], atol=1e-12)
            assert abs(np.linalg.det(p_rot) - 1.0) < 1e-9
    fist = sender.hand_bones(sender.hand_pose("fist"), np.zeros(3), np.eye(3))
    assert np.linalg.norm(fist["rightMiddleTip"][0]) < 0.6 * np.linalg.norm(bones["rightMiddleTip"][0]) + 0.05


def test_failures_on_request() -> None:
    packet = sender.make_packet(sender.hand_pose("open"), np.zeros(3), np.eye(3), 0.0)
    for kind in sender.MALFORMED_KINDS:
        datagram = sender.malformed_datagram(kind, packet, compress=False)
        assert len(datagram) <= 65507  # every kind can actually be sent over UDP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        tx = sender.StudioLiveSender(port=sock.getsockname()[1], rate_hz=1000.0, drop_prob=0.5,
                                     malformed_every=4, seed=3)
        for _ in range(40):
            tx.send_packet(packet)
        tx.close()
        datagrams = receive_all(sock)
    assert 5 < len(datagrams) < 35 and tx.sent == len(datagrams)
    good = sum(1 for d in datagrams if is_v3_packet(d))
    assert 0 < good < len(datagrams)
