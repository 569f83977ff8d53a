"""`unitask predict`: one input from the command line, or JSON lines of them, through a saved model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from unitask.config import Config
from unitask.errors import ConfigError, DataError
from unitask.inference import Router, load_predictor
from unitask.models import MANIFEST


def default_predictor(cfg: Config) -> Router:
    """The saved multi-task model and fusion model (those that exist), each row routed by its task."""
    folders = {"multitask": cfg.path(cfg.multitask.output), "fusion": cfg.path(cfg.fusion.output)}
    present = {name: folder for name, folder in folders.items() if (folder / MANIFEST).is_file()}
    if not present:
        raise ConfigError(
            f"predict: no saved model in {folders['multitask']} or {folders['fusion']}",
            hint="run `unitask multitask` and `unitask fusion` (or `dvc repro`) first, or pass --model DIR",
        )
    return Router({name: load_predictor(folder) for name, folder in present.items()})


def read_rows(source: str, task: str | None) -> list[dict[str, Any]]:
    """JSON objects, one a line (`-`: standard input); `task` fills rows that name none."""
    text = sys.stdin.read() if source == "-" else _read_file(Path(source))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{number}: not a JSON object: {exc.msg}", hint="one JSON object a line") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}:{number}: not a JSON object", hint='e.g. {"task": "sms_spam", "text": "..."}')
        if task and not row.get("task"):
            row["task"] = task
        rows.append(row)
    if not rows:
        raise DataError(f"{source}: no rows to answer")
    return rows


def _read_file(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="pass --input FILE (JSON lines) or - for standard input")
    return path.read_text(encoding="utf-8")


def predict_command(cfg: Config, args: argparse.Namespace) -> None:
    if args.input:
        rows = read_rows(args.input, args.task)
    else:
        if not args.task or (args.text is None and args.image is None):
            raise ConfigError("predict: give --task NAME and --text TEXT (or --input FILE)",
                              hint='e.g. unitask predict --task sms_spam --text "WIN a prize now"')
        row = {"task": args.task, "text": args.text, "text_pair": args.text_pair, "image": args.image}
        rows = [{k: v for k, v in row.items() if v is not None}]
    predictor = load_predictor(args.model) if args.model else default_predictor(cfg)
    unknown = sorted({str(r.get("task")) for r in rows} - set(predictor.tasks))
    if unknown and not args.input:
        raise ConfigError(
            f"predict: no saved model answers task {unknown[0]!r}",
            hint=f"the models answer: {', '.join(predictor.tasks)}",
        )
    outputs = predictor.predict(rows)
    if not args.input:
        if "error" in outputs[0]:
            raise DataError(f"predict: {outputs[0]['error']}")
        print(json.dumps(outputs[0], ensure_ascii=False))
        return
    for output in outputs:
        print(json.dumps(output, ensure_ascii=False))
    failed = sum("error" in output for output in outputs)
    if failed:
        raise DataError(f"predict: {failed} of {len(outputs)} rows could not be answered (see their \"error\")")
