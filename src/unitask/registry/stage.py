"""`unitask register`: log the served model (one pyfunc over the multi-task, fusion and LLM models, each
task answered by the model `register.routes` names), register it, and move the aliases: every new
version is `challenger`; `champion` only when the gate says so.

The gate compares validation scores only (`DECIDING_SPLIT`); test scores are reported (register.json,
version tags, the model card) and decide nothing.

Works against any tracking URI (sqlite, a local `mlflow server`, the team server). Rerunning with the
same model folders and metrics registers nothing new: the version that holds them is reported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import unitask
from unitask.atomic import write_json
from unitask.config import Config
from unitask.data.hashing import sha256_path
from unitask.errors import DataError
from unitask.inference import load_predictor
from unitask.models import MANIFEST, read_manifest
from unitask.registry.card import model_card
from unitask.registry.examples import as_frame, example_rows
from unitask.registry.gate import decide, task_scores
from unitask.registry.pyfunc import LLM_BASE, Router, UnitaskModel, pip_requirements, priority, signature
from unitask.tracking import configure, logged_models_of, stage_run

DECIDING_SPLIT = "validation"  # the split whose scores the gate compares; test is only reported
SCORE_TAG = "unitask.validation_score."  # + task: the version's validation main metric (0-1), what the gate compares
TEST_TAG = "unitask.test_score."  # + task: its test main metric (0-1), reported only
BUNDLES_TAG = "unitask.bundles."  # + artifact: the ids of the training stages' LoggedModels it holds
FINGERPRINT_TAG = "unitask.fingerprint"


def served_routes(cfg: Config) -> dict[str, str]:
    """{task: model} for every served task, in declaration order: `register.routes`, else the multi-task
    model for the text tasks it trains and (with register.include_fusion) the fusion model for text+image."""
    defaults = {model: tasks for model, tasks in cfg.servable_tasks().items() if model != "llm"}  # the LLM only by route
    routes = {task: cfg.register.routes.get(task) or next((m for m, ts in defaults.items() if task in ts), None)
              for task in cfg.tasks}  # fmt: skip
    return {task: model for task, model in routes.items() if model}


def served_folders(cfg: Config, routes: dict[str, str] | None = None) -> dict[str, Path]:
    """{artifact name: model folder} of the models the routes name, in routing priority (the multi-task
    model first)."""
    routes = served_routes(cfg) if routes is None else routes
    if not routes:
        raise DataError("register: no task to serve (no text task the multi-task model trains, no text+image task "
                        "with register.include_fusion, no register.routes)", hint="declare tasks, or set register.routes")
    outputs = {"multitask": cfg.multitask.output, "fusion": cfg.fusion.output, "llm": cfg.llm.output}
    folders = {name: cfg.path(outputs[name]) for name in sorted(set(routes.values()), key=priority)}
    for name, folder in folders.items():
        if not (folder / MANIFEST).is_file():
            hint = {"fusion": ", or set register.include_fusion: false", "llm": ", or route its tasks elsewhere in register.routes"}
            raise DataError(f"{folder}: no saved {name} model (no {MANIFEST})", hint=f"run `unitask {name}` first" + hint.get(name, ""))
    return folders


def llm_base_folder(folders: dict[str, Path]) -> Path | None:
    """The base model folder to bundle beside the LLM: only a base from a local folder (a packaged or
    hub base is found again where the model is loaded, from the identity its manifest records)."""
    if "llm" not in folders:
        return None
    spec = read_manifest(folders["llm"])
    if "base" not in spec:
        raise DataError(f"{folders['llm']}: the saved LLM records no base identity (an older `unitask llm`)",
                        hint="rerun `unitask llm` (dvc repro llm)")
    if spec["base"]["source"] != "local":
        return None
    base = Path(spec["base_path"])
    if not base.is_dir():
        raise DataError(f"{folders['llm']}: its base model folder {base} is gone", hint="rerun `unitask llm`")
    return base


def comparison_table(cfg: Config) -> dict[str, Any]:
    """evaluate's comparison.json: {"validation": table, "test": table}, each {task: {model: metrics}}."""
    path = cfg.path(cfg.evaluate.output) / "comparison.json"
    if not path.is_file():
        raise DataError(f"{path}: no comparison of the models' validation and test metrics", hint="run `unitask evaluate` first")
    table = json.loads(path.read_text(encoding="utf-8"))
    if not {"validation", "test"} <= set(table):
        raise DataError(
            f"{path}: no validation and test tables (an older evaluate's output)",
            hint="rerun the training stages and `unitask evaluate` (dvc repro evaluate)",
        )
    return table


def fingerprint(folders: dict[str, Path], scores: dict[str, dict[str, float]], routes: dict[str, str]) -> str:
    """One hash of the bundled folders' bytes (the LLM's manifest holds its base's identity), the
    routes and the scores the gate saw."""
    parts = {name: sha256_path(folder) for name, folder in folders.items()} | {"scores": scores, "routes": routes}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:  # no such model or no champion yet
        return None


def _same_version(client: Any, name: str, digest: str) -> Any | None:
    versions = client.search_model_versions(f"name = '{name}'")
    return next((v for v in versions if v.tags.get(FINGERPRINT_TAG) == digest), None)


def _scores_of(version: Any | None) -> dict[str, float] | None:
    """The per-task validation scores a registered version was gated with (its tags), or None without
    a version (a version registered before the gate used validation has none: it counts as unscored)."""
    if version is None:
        return None
    return {k.removeprefix(SCORE_TAG): float(v) for k, v in version.tags.items() if k.startswith(SCORE_TAG)}


def _check_examples(cfg: Config, routes: dict[str, str], router: Router) -> list[dict[str, Any]]:
    """A test row per task, each answered without error by the bundle (else nothing is registered)."""
    examples = example_rows(cfg, routes, router.tasks)
    errors = [(row["task"], out["error"]) for row, out in zip(examples, router.predict(examples)) if "error" in out]
    if errors:
        raise DataError(f"the bundled models fail on test rows: {errors[:3]}", hint="retrain the models named there")
    return examples


def served_scores(cfg: Config) -> tuple[dict[str, Path], Router, dict[str, str], dict[str, dict[str, float]]]:
    """The bundled folders (models, and a local LLM base as `llm_base`), their router, task -> model
    routes, and {split: {task: score (0-1)}} of the model each task is routed to, from evaluate's
    comparison: validation (what the gate judges) and test (reported)."""
    routes = served_routes(cfg)
    folders = served_folders(cfg, routes)
    base = llm_base_folder(folders)
    predictors = {artifact: load_predictor(folder, **({"base": str(base)} if artifact == "llm" and base else {}))
                  for artifact, folder in folders.items()}  # fmt: skip
    for task, model in routes.items():
        if task not in predictors[model].tasks:
            raise DataError(f"{folders[model]}: the saved {model} model does not answer task '{task}' "
                            f"(it answers: {', '.join(predictors[model].tasks)})",
                            hint=f"rerun `unitask {model}`, or route '{task}' elsewhere in register.routes")
    router = Router(predictors, routes)
    table = comparison_table(cfg)
    scores = {split: task_scores(table[split], routes, router.tasks, split) for split in ("validation", "test")}
    return folders | ({LLM_BASE: base} if base else {}), router, routes, scores


def gate_now(cfg: Config) -> dict[str, Any]:
    """The gate's decision for the served model as it stands, against the registry's champion (the
    registry is only read): whether `register` would promote it."""
    from mlflow.tracking import MlflowClient

    scores = served_scores(cfg)[3][DECIDING_SPLIT]
    configure(cfg)
    return decide(scores, _scores_of(_champion(MlflowClient(), cfg.register.name)), cfg.register.gate) | {"split": DECIDING_SPLIT}


def register(cfg: Config) -> dict[str, Any]:
    """Gate, log and register the served model; write register.output; return the decision record."""
    from mlflow.tracking import MlflowClient

    name = cfg.register.name
    folders, router, routes, scores = served_scores(cfg)
    digest = fingerprint(folders, scores, routes)
    configure(cfg)
    client = MlflowClient()
    record: dict[str, Any] = {"name": name, "routes": routes, "decided_on": DECIDING_SPLIT, "scores": scores}
    same = _same_version(client, name, digest)
    if same is not None:
        record |= {"version": int(same.version), "decision": "unchanged",
                   "aliases": sorted(client.get_model_version(name, same.version).aliases),
                   "reason": f"version {same.version} already holds these models and metrics"}  # fmt: skip
    else:
        champion = _champion(client, name)
        gate = decide(scores[DECIDING_SPLIT], _scores_of(champion), cfg.register.gate)
        examples = _check_examples(cfg, routes, router)
        record |= {"champion_before": int(champion.version) if champion else None}
        record |= _new_version(cfg, client, folders, router, examples, gate, record, digest)
    write_json(cfg.path(cfg.register.output), record)
    return record


def _new_version(cfg: Config, client: Any, folders: dict[str, Path], router: Router, examples: list[dict[str, Any]],
                 gate: dict[str, Any], record: dict[str, Any], digest: str) -> dict[str, Any]:
    """Log the pyfunc in a `register` run, register it, tag it, move the aliases; the record's rest."""
    import mlflow

    name, scores = cfg.register.name, record["scores"]
    settings = cfg.register.gate
    params = {"name": name, "bundled": ",".join(folders), "gate.primary": settings.primary,
              "gate.max_task_regression": settings.max_task_regression, "gate.min_improvement": settings.min_improvement,
              **{f"route.{task}": model for task, model in record["routes"].items()}}  # fmt: skip
    bundles = {BUNDLES_TAG + artifact: ",".join(logged_models_of(folder)) for artifact, folder in folders.items()
               if artifact != LLM_BASE}  # fmt: skip
    with stage_run(cfg, "register", params=params | bundles) as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=UnitaskModel(),
            artifacts={artifact: str(folder) for artifact, folder in folders.items()},
            model_config={"routes": record["routes"]},
            code_paths=[str(Path(unitask.__file__).parent)],
            signature=signature(),
            input_example=as_frame(examples),
            pip_requirements=pip_requirements(llm="llm" in folders),
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
        card = model_card(cfg, name, record["routes"], scores, gate, folders, DECIDING_SPLIT, router.predictors)
        tags = {FINGERPRINT_TAG: digest, "unitask.run_id": run.info.run_id, "unitask.primary": str(gate["candidate"]["primary"]),
                "unitask.gate_split": DECIDING_SPLIT,
                **{SCORE_TAG + task: str(value) for task, value in scores[DECIDING_SPLIT].items()},
                **{TEST_TAG + task: str(value) for task, value in scores["test"].items()}, **bundles}  # fmt: skip
        mlflow.set_logged_model_tags(info.model_id, bundles)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.update_model_version(name, version, description=card)
        client.set_registered_model_alias(name, "challenger", version)
        if gate["promote"]:
            client.set_registered_model_alias(name, "champion", version)
        decision = "promoted" if gate["promote"] else "not promoted"
        result = {
            "version": int(version),
            "decision": decision,
            "reason": gate["reason"],
            "aliases": ["challenger", "champion"] if gate["promote"] else ["challenger"],
            "gate": {"split": DECIDING_SPLIT, **{k: gate[k] for k in ("candidate", "champion", "deltas", "regressions")}},
            "model_uri": info.model_uri,
            "run_id": run.info.run_id,
        }
        champion_primary = (gate["champion"] or {}).get("primary")
        mlflow.set_tags({"unitask.gate.decision": decision, "unitask.registered_version": version})
        mlflow.log_metrics({
            "gate.promoted": float(gate["promote"]), "gate.primary.candidate": gate["candidate"]["primary"],
            **({"gate.primary.champion": champion_primary} if champion_primary is not None else {}),
            **{f"gate.delta.{t}": d for t, d in gate["deltas"].items()},
            **{f"score.{t}": v for t, v in scores[DECIDING_SPLIT].items()},  # what the gate compared
            **{f"test_score.{t}": v for t, v in scores["test"].items()},  # reported only
        })  # fmt: skip
        mlflow.log_dict(record | result, "gate.json")
        mlflow.log_text(card, "model_card.md")
    return result
