"""Authenticated control-plane announcements: HMAC-SHA256 over a canonical encoding.

Two announcements decide what the robot runs and what the learner trains on:
``CheckpointAvailable`` (learner -> policy: "load this model") and ``ReplayEpisode``
(policy/recorder -> learner: "train on this episode"). Without authentication anyone who can
publish on the DDS domain can steer either. The sender signs the announcement's fields
(including the sha256 of the files it names) with a key shared by both machines; the receiver
refuses an announcement whose signature is missing or wrong when it has a key configured.

Why HMAC-SHA256 and not Ed25519: both ends are our own machines provisioned by the same
operator, so a shared secret is enough and keeps key handling to one file per direction.
The price: whoever holds the key can both sign and verify (the policy PC could forge a
checkpoint announcement with the checkpoint key). Use a different key per direction
(``checkpoint_key_file`` / ``replay_key_file``) so the machines hold only what they need where
that matters.

What a signature covers: the announcement kind (domain separation: a signed replay
announcement cannot be replayed as a checkpoint one) and every field of the message except
the header, encoded as JSON with sorted keys, no whitespace and floats as ``repr`` strings
(bit-exact, no locale). The files' sha256 are among the fields, so a valid signature vouches
for the bytes on disk, not only for a path.

What it does not cover: freshness. A recorded announcement can be sent again; receivers
make that harmless (the policy refuses steps that do not increase within a learner run, the
learner ingests an episode once by id).

Keys are 32 random bytes stored hex-encoded in a file readable only by its owner (mode 0600,
refused otherwise); the key id is the first 16 hex digits of the key's sha256 (it names the
key, it reveals nothing usable). ``sernf-keys generate <file>`` makes one.

Pure Python + ``cryptography``; no rclpy, no message types.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

__all__ = [
    "CHECKPOINT_KIND",
    "KEY_BYTES",
    "REPLAY_KIND",
    "AnnouncementKey",
    "canonical_bytes",
    "checkpoint_order_problem",
    "checkpoint_fields",
    "generate_key_file",
    "load_optional_key",
    "main",
    "replay_fields",
]

KEY_BYTES = 32
#: Domain-separation tags (part of every signed encoding).
CHECKPOINT_KIND = "sernf.checkpoint.v1"
REPLAY_KIND = "sernf.replay.v1"
_KINDS = (CHECKPOINT_KIND, REPLAY_KIND)


def _canonical_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # repr round-trips exactly; NaN/inf have no JSON form but a repr.
        return {"float": repr(value) if math.isfinite(value) else str(value)}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    raise TypeError(f"cannot sign a value of type {type(value).__name__}: {value!r}")


def canonical_bytes(kind: str, fields: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: ``{"kind": kind, "fields": {...}}`` as canonical JSON."""
    if kind not in _KINDS:
        raise ValueError(f"unknown announcement kind {kind!r} (expected one of {list(_KINDS)})")
    body = {"kind": kind, "fields": {str(k): _canonical_value(v) for k, v in fields.items()}}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class AnnouncementKey:
    """A shared HMAC key and its id."""

    secret: bytes
    """The key (32 bytes)."""
    key_id: str
    """First 16 hex digits of sha256(secret)."""

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_BYTES:
            raise ValueError(f"an announcement key is {KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never print the secret
        return f"AnnouncementKey(key_id={self.key_id!r})"

    @classmethod
    def from_secret(cls, secret: bytes) -> AnnouncementKey:
        return cls(secret, hashlib.sha256(secret).hexdigest()[:16])

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AnnouncementKey:
        """Read a key file; refuses files that others can read or write, and bad contents."""
        path = Path(path).expanduser()
        try:
            info = path.stat()
        except FileNotFoundError:
            raise ValueError(f"key file {path} does not exist (make one with: sernf-keys generate {path})") from None
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}: group/others may "
                             f"access it; run chmod 600 {path}")
        text = path.read_text(encoding="ascii").strip()
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"key file {path} does not hold a hex key") from None
        if len(secret) != KEY_BYTES:
            raise ValueError(f"key file {path} holds {len(secret)} bytes, expected {KEY_BYTES}")
        return cls.from_secret(secret)

    def sign(self, kind: str, fields: Mapping[str, Any]) -> str:
        """Hex HMAC-SHA256 of :func:`canonical_bytes`."""
        mac = hmac.HMAC(self.secret, hashes.SHA256())
        mac.update(canonical_bytes(kind, fields))
        return mac.finalize().hex()

    def verify(self, kind: str, fields: Mapping[str, Any], key_id: str, signature: str) -> str:
        """'' if ``signature`` is this key's signature of the fields, else why not."""
        if not signature:
            return "unsigned announcement (a key is configured: signatures are required)"
        if key_id != self.key_id:
            return f"signed with key {key_id!r}, expected key {self.key_id!r}"
        try:
            raw = bytes.fromhex(signature)
        except ValueError:
            return "signature is not hex"
        mac = hmac.HMAC(self.secret, hashes.SHA256())
        mac.update(canonical_bytes(kind, fields))
        try:
            mac.verify(raw)  # constant-time comparison
        except InvalidSignature:
            return "wrong signature (the fields or files differ from what the key holder signed)"
        return ""


def checkpoint_fields(*, uri: str, step: int, stage: str, sha256: str, run_id: str,
                      config_sha256: str) -> dict[str, Any]:
    """The signed fields of a CheckpointAvailable announcement."""
    return {"uri": str(uri), "step": int(step), "stage": str(stage), "sha256": str(sha256),
            "run_id": str(run_id), "config_sha256": str(config_sha256)}


def replay_fields(*, episode_id: str, uri: str, num_steps: int, episode_return: float, source: str,
                  subtask_names: list[str] | tuple[str, ...],
                  subtask_success: list[bool] | tuple[bool, ...]) -> dict[str, Any]:
    """The signed fields of a ReplayEpisode announcement."""
    return {"episode_id": str(episode_id), "uri": str(uri), "num_steps": int(num_steps),
            "episode_return": float(episode_return), "source": str(source),
            "subtask_names": [str(n) for n in subtask_names],
            "subtask_success": [bool(b) for b in subtask_success]}


def load_optional_key(path: str) -> AnnouncementKey | None:
    """The key in ``path``, or None when ``path`` is empty (authentication off)."""
    return AnnouncementKey.load(path) if path else None


def generate_key_file(path: str | os.PathLike[str], overwrite: bool = False) -> AnnouncementKey:
    """Write a new random key to ``path`` with mode 0600 (created exclusively unless ``overwrite``)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(KEY_BYTES)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask; an existing file keeps its mode
        os.write(fd, (secret.hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return AnnouncementKey.from_secret(secret)


def main(argv: list[str] | None = None) -> int:
    """``sernf-keys``: generate announcement keys and show their ids."""
    parser = argparse.ArgumentParser(prog="sernf-keys", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a new random key file (mode 0600)")
    gen.add_argument("path")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    show = sub.add_parser("id", help="print the id of a key file (checks its permissions)")
    show.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            key = generate_key_file(args.path, overwrite=args.force)
            print(f"wrote {args.path} (key id {key.key_id}); copy it to the other machine with mode 0600")
        else:
            print(AnnouncementKey.load(args.path).key_id)
    except (OSError, ValueError) as exc:
        print(f"sernf-keys: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def checkpoint_order_problem(current: tuple[str, int, str] | None, run_id: str, step: int, sha256: str,
                             retired_runs: frozenset[str] | set[str] = frozenset()) -> str:
    """'' if a checkpoint ``(run_id, step, sha256)`` may replace ``current``, else why not.

    ``current``: ``(run_id, step, sha256)`` of the checkpoint running (or already verified and
    waiting to be swapped in); run id ``""`` for one loaded from the node's own configuration.
    Rules: within a learner run, steps strictly increase; a new run (the learner restarted, it
    resumes from its last checkpoint) may not go below the running step, nor announce the
    running step with other weights; announcements from a run that was superseded are refused.
    """
    if current is None:
        return ""
    cur_run, cur_step, cur_sha = current
    if run_id != cur_run and run_id in retired_runs:
        return f"announced by learner run {run_id!r}, which a later run superseded"
    if run_id == cur_run and cur_run:
        if step <= cur_step:
            return f"step {step} does not increase over the running step {cur_step} of learner run {run_id!r}"
        return ""
    if step < cur_step:
        return f"step {step} goes back from the running step {cur_step}"
    if step == cur_step and sha256 != cur_sha and cur_run:
        return f"step {step} is the running step but the weights differ"
    return ""
