"""Content hashes of files and folders, the checksums that `sha256:` in a source declares."""

from __future__ import annotations

import hashlib
from pathlib import Path

from unitask.errors import DataError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """A file's sha256, or for a folder the sha256 of its sorted `relative/path<TAB>sha256` lines,
    so that the same bytes under the same names hash the same on every machine."""
    if path.is_file():
        return sha256_file(path)
    lines = "".join(
        f"{p.relative_to(path).as_posix()}\t{sha256_file(p)}\n"
        for p in sorted(path.rglob("*"))
        if p.is_file()
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_sha256(path: Path, expected: str | None, key: str, what: str) -> str:
    """`path`'s sha256; a DataError naming `key` (the config key that pins it) and `what` (the
    source) when `expected` is set and differs."""
    got = sha256_path(path)
    if expected and got != expected:
        raise DataError(
            f"{key}: checksum mismatch for {what}: expected sha256 {expected}, got {got}",
            hint=f"the source is corrupted or a different version; restore it, or update {key}.sha256 "
            "if the change is intended",
        )
    return got
