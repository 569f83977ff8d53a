"""`unitask validate`: run each task's suites over its prepared splits, write the JSON summary and
Data Docs, log an MLflow run, and stop the pipeline on any failed `error` check."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from unitask.atomic import atomic_dir, write_json
from unitask.config import SPLITS, Config
from unitask.errors import DataError
from unitask.tracking import flatten, log_datasets, stage_run
from unitask.validation.checks import DEFAULT_SEVERITY, SCHEMA, content_checks, derive, schema_checks, severity
from unitask.validation.load import InputError, load_split, short
from unitask.validation.suites import Outcome, Suites


class ValidationFailed(DataError):
    """At least one expectation of severity `error` failed: the pipeline must not go on."""


def validate(cfg: Config, tasks: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Validate the named tasks (all by default) and return each task's summary.

    Every task is validated and reported, then a `ValidationFailed` (or `InputError`) is raised
    if any task failed; its message names task, split, column, check and up to 5 rows by `id`.
    """
    names = tasks or list(cfg.tasks)
    for name in names:
        cfg.task(name)
    import mlflow
    from unitask.models.backbone import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    params = {"max_length": cfg.model.max_length, **flatten("", cfg.validate.model_dump(exclude={"severity"}))}
    params.update({f"severity.{k}": v for k, v in cfg.validate.severity.items()})
    summaries: dict[str, dict[str, Any]] = {}
    errors: list[DataError] = []
    for name in names:
        try:
            with stage_run(cfg, "validate", name, params):
                summaries[name], failed = _validate_logged(cfg, name, tokenizer, mlflow)
                if summaries[name]["status"] == "failed":
                    raise ValidationFailed(failure_message(name, failed), hint=_HINT.format(task=name))
        except (InputError, ValidationFailed) as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ValidationFailed("\n".join(str(e) for e in errors))
    return summaries


_HINT = (
    "fix the rows above (then `unitask prepare`), or set validate.severity.<check>=warn to accept "
    "them; details: reports/data_docs/{task}/failures.json and reports/data_docs/{task}/index.html"
)


def _validate_logged(cfg: Config, name: str, tokenizer: Any, mlflow: Any) -> tuple[dict[str, Any], list[Outcome]]:
    summary_file = report_dir(cfg) / f"{name}.json"
    try:
        summary, failed = validate_task(cfg, name, tokenizer)
    except InputError as exc:
        with atomic_dir(docs_dir(cfg) / name) as tmp:
            (tmp / "error.txt").write_text(str(exc) + "\n", encoding="utf-8")
        write_json(summary_file, {"task": name, "status": "error", "error": str(exc)})
        mlflow.log_artifact(str(summary_file))
        raise
    mlflow.log_metrics(
        flatten(
            "",
            {"rows": summary["rows"], "rows_checked": summary["rows_checked"], "expectations": summary["expectations"]},
        )
        | flatten("split", summary["splits"])
    )
    mlflow.log_artifact(str(summary_file))
    mlflow.log_artifacts(str(docs_dir(cfg) / name), "data_docs")
    log_datasets(cfg, [name])  # the splits validated, readable now
    return summary, failed


def report_dir(cfg: Config) -> Path:
    """The JSON summaries, one per task (training stages depend on them)."""
    return cfg.path(cfg.paths.reports) / "validate"


def docs_dir(cfg: Config) -> Path:
    """Data Docs and failure details, one folder per task. Kept apart from the summaries: the HTML
    carries timestamps, and training stages must not rerun because validation reran."""
    return cfg.path(cfg.paths.reports) / "data_docs"


def validate_task(cfg: Config, name: str, tokenizer: Any) -> tuple[dict[str, Any], list[Outcome]]:
    """Validate one task: write reports/validate/<task>.json (the summary) and
    reports/data_docs/<task>/ (Data Docs, failures.json, GX results); return the summary and the
    failed expectations."""
    task = cfg.tasks[name]
    splits = {split: load_split(cfg, name, task, split) for split in SPLITS}
    severities = {c: severity(cfg, c) for c in (SCHEMA, *DEFAULT_SEVERITY)}
    outcomes: list[Outcome] = []
    with atomic_dir(docs_dir(cfg) / name) as tmp:
        suites = Suites(name, tmp if cfg.validate.data_docs else None)
        suites.add_suite(f"{name}.schema", schema_checks(task), severities)
        suites.add_suite(name, content_checks(cfg, task), severities)
        complete = {}
        for split, frame in splits.items():
            found = suites.run(f"{name}.schema", split, frame)
            outcomes += found
            if all(o.success for o in found):
                complete[split] = frame
        derived = derive(cfg, task, complete, tokenizer)
        for split, frame in derived.items():
            outcomes += suites.run(name, split, frame)
        suites.build_docs()
        failed = [o for o in outcomes if not o.success]
        (tmp / "failures.json").write_text(
            json.dumps([asdict(o) for o in failed], indent=1, default=str), encoding="utf-8"
        )
        (tmp / "results.json").write_text(json.dumps(suites.results, indent=1, default=str), encoding="utf-8")
    summary = summarize(cfg, name, splits, derived, outcomes)
    write_json(report_dir(cfg) / f"{name}.json", summary)
    return summary, failed


def summarize(
    cfg: Config, name: str, splits: dict[str, Any], derived: dict[str, Any], outcomes: list[Outcome]
) -> dict[str, Any]:
    """Counts and split statistics, and one line per failed expectation."""
    failed = [o for o in outcomes if not o.success]
    errors = [o for o in failed if o.severity == "error"]
    stats: dict[str, dict[str, float]] = {}
    for split, frame in derived.items():
        stats[split] = {
            "truncated_share": round(float(frame["_truncated"].mean()), 6),
            "max_tokens": int(frame["_n_model_tokens"].max()),
            "duplicate_rows": int(frame["_input_key"].duplicated(keep=False).sum()),
            "leaked_rows": int((frame["_seen_in"] != "").sum()),
            "failed_expectations": sum(1 for o in failed if o.split == split),
        }
        if "_class_ratio" in frame:
            stats[split]["class_ratio_min"] = round(float(np.nanmin(frame["_class_ratio"])), 6)
    lines: dict[str, str] = {}
    for o in failed:
        key = f"{o.split}/{o.column}/{o.check}"
        key = key if key not in lines else f"{key}/{o.expectation.rsplit(' ', 1)[-1]}"
        lines[key] = f"{o.severity}: {_count(o)}"
    return {
        "task": name,
        "type": cfg.tasks[name].type,
        "status": "failed" if errors else "warned" if failed else "passed",
        "rows": {s: len(f) for s, f in splits.items()},
        "rows_checked": sum(len(f) for f in splits.values()),
        "max_length": cfg.model.max_length,
        "expectations": {
            "evaluated": len(outcomes),
            "failed": len(failed),
            "failed_error": len(errors),
            "failed_warn": len(failed) - len(errors),
        },
        "splits": stats,
        "failures": lines,
    }


def _count(o: Outcome) -> str:
    if o.observed is not None:
        return f"observed {short(o.observed)} over {o.rows} rows"
    if o.unexpected is None:
        return "failed"
    return f"{o.unexpected} of {o.rows} rows"


def failure_message(name: str, failed: list[Outcome]) -> str:
    """The failed `error` checks of a task, one line each, with at most 5 offending rows."""
    errors = [o for o in failed if o.severity == "error"]
    lines = [f"tasks.{name}: {len(errors)} failed expectation(s) of severity error"]
    for o in errors:
        lines.append(f"  split {o.split}, column '{o.column}': {o.check} failed ({o.expectation}; {_count(o)})")
        lines += [f"    {example}" for example in o.examples]
    return "\n".join(lines)
