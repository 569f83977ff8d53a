"""Data validation with great-expectations: the gate between `prepare` and any training.

For every task a suite is derived from its type's roles and its declaration (no suite is written
per dataset): `load` reads and type-checks the prepared splits, `checks` derives the expectations
and the helper columns they read, `suites` runs them in an ephemeral GX context and builds Data
Docs, `stage` writes the reports, logs MLflow and raises when a check of severity `error` fails.
"""

from unitask.validation.load import InputError
from unitask.validation.stage import ValidationFailed, validate

__all__ = ["InputError", "ValidationFailed", "validate"]
