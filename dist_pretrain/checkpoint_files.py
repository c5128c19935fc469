"""Checkpoint directories as files: checksums, verification, which step to resume from.

No torch here, so the pre-flight check (``dist_pretrain.preflight``) and the checkpoint
tools can verify a checkpoint without importing the training stack.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dist_pretrain.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be written or used, with the reason."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(directory: Path) -> str | None:
    """None if the checkpoint is complete and every file matches its checksum, else why not."""
    directory = Path(directory)
    if not directory.exists():
        return "does not exist"
    if not directory.is_dir():
        return "is a file, not a checkpoint directory"
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return "no manifest.json (incomplete save)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"unreadable manifest.json: {err}"
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, manifest says {entry['bytes']} (truncated?)"
        if sha256_file(path) != entry["sha256"]:
            return f"{name} does not match its sha256 (corrupt)"
    return None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    out = []
    for path in root.glob("step-*"):
        try:
            out.append((int(path.name.split("-", 1)[1]), path))
        except ValueError:
            continue
    return sorted(out)


def find_resumable(root: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from: ``latest`` if it verifies, else the newest that does.

    Returns it (or None) and warnings naming what was skipped and why.
    """
    warnings = []
    candidates = [path for _, path in reversed(step_dirs(root))]
    latest = root / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        target = root / name
        if not name.startswith("step-") or not target.is_dir():
            warnings.append(f"{latest} points to {name!r}, which is not a checkpoint; ignoring it")
        else:
            candidates = [target] + [c for c in candidates if c != target]
    for path in candidates:
        problem = verify(path)
        if problem is None:
            return path, warnings
        warnings.append(f"checkpoint {path} is unusable: {problem}; trying an older one")
    return None, warnings
