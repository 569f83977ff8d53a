"""Encoded model features as a `datasets.Dataset`, shared by every text task type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset


def features_dataset(columns: dict[str, list[Any]]) -> Dataset:
    """The encoded columns as a Dataset, like `Dataset.from_dict` but with a random fingerprint:
    from_dict hashes the whole table for one, 6 ms for a one-row table against 0.5 ms here (a third of
    a one-row request to the served model; BENCHMARKS.md, "Serving"), and fingerprints only name
    datasets' cache files, which unitask never writes."""
    from datasets import Dataset, Features
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.info import DatasetInfo
    from datasets.table import InMemoryTable

    table = InMemoryTable.from_pydict(dict(columns))
    info = DatasetInfo(features=Features.from_arrow_schema(table.schema))
    return Dataset(table, info=info, fingerprint=generate_random_fingerprint())
