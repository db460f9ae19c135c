"""Checkpoint files: safetensors weights + a JSON config, written atomically (docs/design.md §2).

Layout of a checkpoint directory::

    <dir>/model.safetensors   every parameter and persistent buffer (state_dict), no pickle
    <dir>/config.json         {"format_version", "kind", "weights_file", "weights_sha256",
                               "config": <plain-JSON config>, "metadata": {...}}

Writing goes to a temporary sibling directory which is then renamed into place; an existing
checkpoint at the same path is moved aside first and deleted after the swap, so readers see
either the old or the new complete checkpoint (or, during the instant between the two renames,
no directory at all - never a partial one).

Reading verifies the format version, the weights file's sha256 (which also catches truncation)
and that safetensors can parse it; :func:`load_state_strict` then checks names, shapes and
dtypes against the freshly built model *before* copying anything. Every failure raises
:class:`CheckpointError` naming the problem and the file.

This module knows nothing about the policy; :meth:`sernf_policy.policy.Policy.save` /
``Policy.load`` use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config_io import to_jsonable

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "CheckpointError",
    "file_sha256",
    "load_state_strict",
    "read_checkpoint",
    "recover_stale_temps",
    "resolve_inside_roots",
    "write_checkpoint",
]

#: Version of the on-disk layout; bump on incompatible changes.
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, of another version or does not fit the model."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not all platforms / filesystems allow it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_checkpoint(
    directory: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    config: Any,
    kind: str,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write ``tensors`` and ``config`` (a config dataclass or plain dict) to ``directory``.

    Returns the sha256 of the weights file (what ``CheckpointAvailable.sha256`` announces).
    """
    directory = Path(directory).absolute()
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"checkpoint path exists and is not a directory: {directory}")
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": None,
        "config": to_jsonable(config),
        "metadata": to_jsonable(dict(metadata or {})),
    }
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
    try:
        weights = tmp / WEIGHTS_FILE
        save_file(cpu, str(weights), metadata={"format_version": str(FORMAT_VERSION), "kind": kind})
        header["weights_sha256"] = sha = file_sha256(weights)
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as fh:
            json.dump(header, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        with open(weights, "rb") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if directory.exists():
            old = parent / f".{directory.name}.old-{uuid.uuid4().hex}"
            os.replace(directory, old)
            try:
                os.replace(tmp, directory)
            except OSError:
                os.replace(old, directory)  # put the previous checkpoint back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sha


def read_checkpoint(directory: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read and verify a checkpoint; returns ``(header, tensors)`` (tensors on CPU).

    ``header["config"]`` is the plain-JSON config, ``header["metadata"]`` the free metadata.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    cfg_path = directory / CONFIG_FILE
    try:
        header = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint has no {CONFIG_FILE}: {cfg_path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt or truncated checkpoint config {cfg_path}: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint config {cfg_path} is not a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format_version {version!r} in {cfg_path} (this code reads {FORMAT_VERSION})"
        )
    if header.get("kind") != kind:
        raise CheckpointError(f"checkpoint {cfg_path} holds {header.get('kind')!r}, expected {kind!r}")
    for key in ("weights_file", "weights_sha256", "config"):
        if key not in header:
            raise CheckpointError(f"checkpoint config {cfg_path} lacks {key!r}")
    # The weights file name is fixed: never follow a path taken from the file itself.
    if header["weights_file"] != WEIGHTS_FILE:
        raise CheckpointError(f"unexpected weights_file {header['weights_file']!r} in {cfg_path}")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights missing: {weights}")
    sha = file_sha256(weights)
    if sha != header["weights_sha256"]:
        raise CheckpointError(
            f"checkpoint weights {weights} are corrupt or truncated: sha256 {sha} != recorded "
            f"{header['weights_sha256']}"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"unreadable safetensors file {weights}: {exc}") from exc
    header.setdefault("metadata", {})
    return header, tensors


def resolve_inside_roots(directory: str | os.PathLike[str], roots: tuple[str, ...] | list[str]) -> Path:
    """The real path of checkpoint ``directory`` if it and its files lie inside one of ``roots``.

    Both sides are resolved (``..`` and every symlink) first, so a symlink inside a root that
    points elsewhere, or ``root/../x``, is refused; the checkpoint's two files are resolved
    too (a weights file that is a symlink out of the root is refused). Raises
    :class:`CheckpointError` naming the problem. No roots: everything is refused.
    """
    if not roots:
        raise CheckpointError(f"{directory}: no checkpoint roots are configured, so no announced checkpoint "
                              "is accepted (set checkpoint_roots)")
    real_roots = [os.path.realpath(os.path.expanduser(r)) for r in roots]

    def inside(path: str) -> bool:
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in real_roots)

    real = os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(directory))))
    if not inside(real):
        raise CheckpointError(f"{directory} resolves to {real}, outside the checkpoint roots {real_roots}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        target = os.path.realpath(os.path.join(real, name))
        if not inside(target):
            raise CheckpointError(f"{directory}/{name} resolves to {target}, outside the checkpoint roots")
    return Path(real)


def recover_stale_temps(parent: str | os.PathLike[str], pattern: str = ".*") -> list[str]:
    """Clean up what killed writers left in ``parent``; returns what was done (one line each).

    :func:`write_checkpoint` writes ``.<name>.tmp-*`` and moves a replaced checkpoint aside to
    ``.<name>.old-*`` for an instant. A temp directory is never committed data: removed. An
    ``.old-*`` directory whose ``<name>`` is missing is the only copy of a committed checkpoint
    (killed between the two renames): renamed back. One whose ``<name>`` exists is superseded:
    removed. Only hidden names of these two forms that match ``pattern`` are touched; call it
    where no writer runs (at start-up of the only writer).
    """
    parent = Path(parent)
    done: list[str] = []
    if not parent.is_dir():
        return done
    for path in sorted(parent.glob(pattern)):
        name = path.name
        if not name.startswith("."):
            continue
        for marker, kind in ((".tmp-", "tmp"), (".old-", "old")):
            if marker not in name:
                continue
            target = parent / name[1:].split(marker, 1)[0]
            if kind == "old" and path.is_dir() and not target.exists() and target.name:
                os.replace(path, target)
                done.append(f"restored {target} from {path.name}")
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                done.append(f"removed {path}")
            else:
                path.unlink(missing_ok=True)
                done.append(f"removed {path}")
            break
    return done


def load_state_strict(module: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
    """Copy ``tensors`` into ``module`` after checking names, shapes and dtypes all match.

    Nothing is copied unless everything matches, so a failed load leaves ``module`` untouched.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [
        f"{name}: checkpoint {tuple(tensors[name].shape)} {tensors[name].dtype} vs model "
        f"{tuple(ref.shape)} {ref.dtype}"
        for name, ref in expected.items()
        if name in tensors and (tensors[name].shape != ref.shape or tensors[name].dtype != ref.dtype)
    ]
    if missing or extra or wrong:

        def short(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        problems = []
        if missing:
            problems.append(f"missing tensors [{short(missing)}]")
        if extra:
            problems.append(f"unexpected tensors [{short(extra)}]")
        if wrong:
            problems.append(f"shape/dtype mismatches [{short(wrong)}]")
        raise CheckpointError(f"checkpoint {source} does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        module.load_state_dict(dict(tensors), strict=True)
