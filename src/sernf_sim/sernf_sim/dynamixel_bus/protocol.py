"""Dynamixel Protocol 2.0 framing: CRC-16, byte stuffing, instruction and status packets.

Packet layout (ROBOTIS e-Manual, "Protocol 2.0"): header FF FF FD, reserved 00, id, length
(2 bytes, little endian; counts instruction + parameters + CRC), instruction, parameters, CRC-16
(polynomial 0x8005, initial value 0, no reflection) over everything before it. Inside
instruction/error + parameters, every FF FF FD is sent as FF FF FD FD ("byte stuffing") so no
header can appear in a payload; the length field counts the stuffed bytes.

Written from the protocol description, independently of dynamixel-sdk, so the stand-in checks the
SDK's packets instead of sharing its bugs.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = bytes((0xFF, 0xFF, 0xFD, 0x00))
BROADCAST_ID = 0xFE

PING = 0x01
READ = 0x02
WRITE = 0x03
REBOOT = 0x08
STATUS = 0x55
SYNC_READ = 0x82
SYNC_WRITE = 0x83
BULK_READ = 0x92

# Status packet error field: bit 7 "alert" (a hardware error is latched in register 70), low
# bits an error number for this instruction.
ERR_RESULT_FAIL = 0x01
ERR_INSTRUCTION = 0x02
ERR_CRC = 0x03
ERR_DATA_RANGE = 0x04
ERR_DATA_LENGTH = 0x05
ERR_DATA_LIMIT = 0x06
ERR_ACCESS = 0x07
ALERT = 0x80


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """CRC-16/BUYPASS (poly 0x8005, init 0), the Protocol 2.0 checksum."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert an FD after every FF FF FD in instruction/error + parameters."""
    out = bytearray()
    for byte in body:
        out.append(byte)
        if byte == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


class StuffingError(ValueError):
    """A received body contains an FF FF FD that is not followed by the stuffing FD."""


def unstuff(body: bytes) -> bytes:
    """Remove stuffing; an unstuffed FF FF FD is a framing error (a real servo's receiver
    takes it for the start of a new packet, so the packet it was in is lost)."""
    out = bytearray()
    i = 0
    while i < len(body):
        byte = body[i]
        out.append(byte)
        if byte == 0xFD and i >= 2 and body[i - 2] == 0xFF and body[i - 1] == 0xFF:
            if i + 1 < len(body) and body[i + 1] == 0xFD:
                i += 1  # drop the stuffing byte
            else:
                raise StuffingError("FF FF FD inside a packet without stuffing")
        i += 1
    return bytes(out)


def build_packet(servo_id: int, body: bytes) -> bytes:
    """A complete packet (instruction or status) from its unstuffed body."""
    stuffed = stuff(body)
    length = len(stuffed) + 2
    head = HEADER + bytes((servo_id, length & 0xFF, length >> 8))
    packet = head + stuffed
    crc = crc16(packet)
    return packet + bytes((crc & 0xFF, crc >> 8))


def status_packet(servo_id: int, error: int, params: bytes = b"", corrupt_crc: bool = False) -> bytes:
    packet = bytearray(build_packet(servo_id, bytes((STATUS, error)) + params))
    if corrupt_crc:
        packet[-1] ^= 0xFF
    return bytes(packet)


@dataclass(frozen=True)
class Instruction:
    servo_id: int
    instruction: int
    params: bytes


class PacketParser:
    """Incremental parser of the master's byte stream into instruction packets.

    Bytes before a header are skipped (line noise); a packet with a bad CRC or bad stuffing is
    dropped and counted, as a servo does (it answers nothing to a packet it cannot trust).
    """

    MAX_LENGTH = 1024

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.crc_errors = 0
        self.stuffing_errors = 0

    def feed(self, data: bytes) -> list[Instruction]:
        self._buffer.extend(data)
        packets = []
        while True:
            start = self._buffer.find(HEADER)
            if start < 0:
                # keep a possible partial header at the end
                del self._buffer[: max(0, len(self._buffer) - 3)]
                return packets
            del self._buffer[:start]
            if len(self._buffer) < 7:
                return packets
            length = self._buffer[5] | (self._buffer[6] << 8)
            if length < 3 or length > self.MAX_LENGTH:
                del self._buffer[:1]
                continue
            total = 7 + length
            if len(self._buffer) < total:
                return packets
            packet = bytes(self._buffer[:total])
            del self._buffer[:total]
            crc = packet[-2] | (packet[-1] << 8)
            if crc16(packet[:-2]) != crc:
                self.crc_errors += 1
                continue
            try:
                body = unstuff(packet[7:-2])
            except StuffingError:
                self.stuffing_errors += 1
                continue
            packets.append(Instruction(packet[4], body[0], body[1:]))
