"""great-expectations plumbing: an ephemeral context per task, a suite per check list, one
validation definition per split, results read back into `Outcome`s, Data Docs to a local folder."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from unitask.atomic import json_value
from unitask.config import Severity
from unitask.validation.checks import Check
from unitask.validation.load import SHOW, short

SITE = "unitask"
RESULT_FORMAT = {"result_format": "SUMMARY", "unexpected_index_column_names": ["id"], "partial_unexpected_count": SHOW}


@dataclass
class Outcome:
    """One expectation on one split."""

    split: str
    check: str
    column: str  # the role
    expectation: str  # e.g. expect_column_values_to_be_in_set on label
    severity: Severity
    success: bool
    rows: int
    unexpected: int | None  # rows that failed (row checks); None for split-level checks
    observed: Any = None  # split-level checks: the statistic, e.g. the truncated share
    examples: list[str] = field(default_factory=list)  # `id=..: value` of at most SHOW offending rows


class Suites:
    """The task's suites and their validation runs, in one ephemeral GX context."""

    def __init__(self, task: str, docs: Path | None) -> None:
        self.task = task
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.docs = docs
        if docs is not None:
            self.context.add_data_docs_site(
                SITE,
                {
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        self.source = self.context.data_sources.add_pandas("prepared")
        self.batches: dict[str, Any] = {}
        self.suites: dict[str, tuple[Any, dict[str, tuple[Check, Severity]]]] = {}
        self.results: list[dict[str, Any]] = []

    def add_suite(self, name: str, checks: list[Check], severities: dict[str, Severity]) -> None:
        suite = self.context.suites.add(gx.ExpectationSuite(name=name))
        by_id = {}
        for check in checks:
            sev = severities[check.name]
            check.expectation.meta = {"check": check.name, "severity": sev, "role": check.column}
            by_id[suite.add_expectation(check.expectation).id] = (check, sev)
        self.suites[name] = (suite, by_id)

    def run(self, suite_name: str, split: str, frame: pd.DataFrame) -> list[Outcome]:
        """Validate `frame` (split `split`) against the suite; one Outcome per expectation."""
        if split not in self.batches:
            asset = self.source.add_dataframe_asset(f"{self.task}.{split}")
            self.batches[split] = asset.add_batch_definition_whole_dataframe("all")
        suite, by_id = self.suites[suite_name]
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}@{split}", data=self.batches[split], suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
        self.results.append(result.to_json_dict())
        lookup = frame.set_index("id", drop=False) if "id" in frame and frame["id"].is_unique else None
        return [_outcome(split, by_id[r.expectation_config.id], r, frame, lookup) for r in result.results]

    def build_docs(self) -> None:
        if self.docs is not None:
            self.context.build_data_docs(site_names=[SITE])
            _prune_static(self.docs)


def _outcome(
    split: str, entry: tuple[Check, Severity], result: Any, frame: pd.DataFrame, lookup: pd.DataFrame | None
) -> Outcome:
    check, severity = entry
    config = result.expectation_config
    kwargs = config.kwargs
    checked = kwargs.get("column") or f"{kwargs.get('column_A')}, {kwargs.get('column_B')}"
    out = Outcome(
        split=split,
        check=check.name,
        column=check.column,
        expectation=f"{config.type} on {checked}",
        severity=severity,
        success=bool(result.success),
        rows=len(frame),
        unexpected=result.result.get("unexpected_count"),
        observed=json_value(result.result.get("observed_value")),
    )
    info = result.exception_info or {}
    if info.get("raised_exception"):
        out.success = False
        out.examples = [f"the expectation could not run: {str(info.get('exception_message')).splitlines()[0]}"]
        return out
    if out.success:
        return out
    shown = check.shows or kwargs.get("column")
    if check.offenders is not None:
        mask = frame[check.offenders].astype(bool).to_numpy()
        out.unexpected = int(mask.sum())
        ids = frame["id"][mask][:SHOW].tolist() if "id" in frame else []
    else:
        ids = [row.get("id") for row in result.result.get("partial_unexpected_index_list") or []]
    out.examples = [_example(check, shown, i, lookup) for i in ids[:SHOW]]
    return out


def _example(check: Check, shown: str | None, row_id: Any, lookup: pd.DataFrame | None) -> str:
    """`id=7: label='spamm'`, plus the derived value when the check reads a derived column."""
    if lookup is None or row_id not in lookup.index:
        return f"id={row_id}"
    row = lookup.loc[row_id]
    text = f"id={row_id}: {check.column}={short(row[check.column]) if check.column in row else '?'}"
    if shown and shown != check.column and shown in row:
        text += f" ({shown.lstrip('_')}={short(row[shown])})"
    return text



def _prune_static(docs: Path) -> None:
    """Drop the site's bundled assets that no page refers to (GX ships ~3 MB of unused GIFs)."""
    pages = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in docs.rglob("*.html"))
    pages += "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in docs.rglob("*.css"))
    used = set(re.findall(r"[\w.-]+\.\w+", pages))
    for asset in (docs / "static").rglob("*"):
        if asset.is_file() and asset.name not in used:
            asset.unlink()
