"""Load `params.yaml`, apply `key=value` overrides, and turn validation errors into messages that
name each bad key and what is allowed there (a `ConfigError`, exit code 2)."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML, YAMLError

from unitask.config.schema import Config
from unitask.errors import ConfigError


def load_config(params: str | Path = "params.yaml", overrides: list[str] = ()) -> Config:
    """Read `params`, apply `key=value` overrides, validate. Raises ConfigError on any problem."""
    path = Path(params)
    raw = _read(path)
    for item in overrides:
        apply_override(raw, item)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(err) for err in exc.errors()]
        raise ConfigError(
            f"{path}: invalid configuration\n  " + "\n  ".join(lines),
            hint="fix the keys above (see README.md, 'The config')",
        ) from None
    cfg._root = path.resolve().parent
    cfg.check_paths()
    return cfg


def read_yaml(text: str) -> Any:
    """Parse YAML 1.2, as DVC reads and rewrites params.yaml: `dvc exp run -S` writes `yes`/`no` without
    quotes, which YAML 1.1 (PyYAML) would read as booleans. Duplicate keys are an error."""
    return YAML(typ="safe").load(text)


def _read(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The params file as a mapping; a file with `extends: BASE` is BASE (relative to it) with the file's
    own keys merged over it, mappings key by key (an overlay such as params.gpu.yaml)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file", hint="pass --params FILE" if not children else
                          f"fix `extends` in {children[-1]}")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}",
            hint="fix the YAML syntax there (unclosed brackets or quotes, tabs, bad indentation)",
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections", hint="start from params.yaml")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    base_path = (path.parent / str(base)).resolve()
    if base_path in (path.resolve(), *children):
        raise ConfigError(f"{path}: `extends: {base}` comes back to itself", hint="extend a file that does not extend this one")
    return _merge(_read(base_path, (*children, path.resolve())), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value", hint="e.g. --set prepare.max_rows=200")
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {item!r}: '{'.'.join(parts[: i + 1])}' is not a section",
                hint="set the key itself, not a key inside it",
            )
        node = child
    try:
        node[parts[-1]] = read_yaml(value) if value else ""
    except YAMLError as exc:
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML: {exc}", hint="quote the value, e.g. --set 'key=\"a: b\"'"
        ) from None


def describe_error(err: dict[str, Any], schema: type[BaseModel] | None = None, prefix: tuple[str, ...] = ()) -> str:
    """One line per error of `schema` (default: Config), found under `prefix`: the dotted key, what
    went wrong and what is allowed."""
    model, shown = _walk(err["loc"], schema or Config)
    shown = [*prefix, *shown]
    key = ".".join(shown) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"{key}: unknown key; allowed here: {allowed}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    field, sep, rest = msg.partition(": ")
    if err["type"] == "value_error" and sep and all(p.isidentifier() for p in field.split(".")):
        key, msg = f"{key}.{field}" if shown else field, rest  # a model check names its field first
    got = err.get("input")
    if err["type"] in ("model_type", "dict_type") or isinstance(got, (dict, list)):
        return f"{key}: {msg}"
    if isinstance(got, bool) and err["type"] == "string_type":
        msg += "; quote it: YAML reads true/false unquoted as booleans"
    return f"{key}: {msg} (got {got!r})"


def _walk(loc: tuple[Any, ...], schema: type[BaseModel]) -> tuple[type[BaseModel] | None, list[str]]:
    """Follow an error location through `schema`: the model that owns the last key, and the path to
    show (discriminator tags that pydantic inserts into `loc` are left out)."""
    shown: list[str] = []
    model: type[BaseModel] | None = schema
    annotation: Any = None
    owner: type[BaseModel] | None = schema
    for part in loc:
        if annotation is not None:
            origin = typing.get_origin(annotation)
            if origin is Annotated:
                annotation = typing.get_args(annotation)[0]
                origin = typing.get_origin(annotation)
            if origin in (Union, types.UnionType):
                members = {
                    typing.get_args(m.model_fields["kind"].annotation)[0]: m
                    for m in typing.get_args(annotation)
                    if isinstance(m, type) and issubclass(m, BaseModel) and "kind" in m.model_fields
                }
                if part in members:
                    annotation, model = members[part], members[part]
                    continue
            if origin is dict:
                annotation = typing.get_args(annotation)[1]
                shown.append(str(part))
                model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
                continue
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
        shown.append(str(part))
        owner = model
        if model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        else:
            annotation = None
            model = None
    return owner, shown
