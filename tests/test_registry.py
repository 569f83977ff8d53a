"""`unitask register` through a real `mlflow server` over HTTP: log, register, alias, load by alias,
predict every task type, the gate in the registry, rerun safety, and `mlflow models serve`.

Tiny real models are trained once per module: the multi-task model (every text task type) and the
fusion model (a text+image task whose label is the colour of the image)."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import TINY_BERT, Server, free_port, synthetic_task, write_project, write_splits

from unitask.config import Config, load_config
from unitask.tracking import log_trained_model, stage_run

BIN = Path(sys.executable).parent
TEXT_TYPES = ("classification", "pair_classification", "regression", "token_classification", "extractive_qa")
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
TINY_VIT = {"model_type": "vit", "image_size": 16, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32}  # fmt: skip


def _colour_rows(root: Path, n: int) -> list[dict[str, Any]]:
    """Rows of a text+image task: a 16x16 picture of one colour; the question does not tell which."""
    from PIL import Image

    folder = root / "data" / "raw" / "colours"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = list(COLOURS)[i % 2]
        Image.new("RGB", (16, 16), COLOURS[label]).save(folder / f"{i}.png")
        rows.append({"id": i, "text": f"what colour is shape {i}?", "image": f"data/raw/colours/{i}.png", "label": label})
    return rows


def _data(root: Path) -> dict[str, Any]:
    """Prepared splits of a task of every type in `root`; the task declarations."""
    sizes = (48, 16, 16)
    tasks = {}
    for kind in TEXT_TYPES:
        tasks[kind], rows = synthetic_task(kind, sum(sizes), seed=3)
        write_splits(root, kind, rows, sizes)
    tasks["classification"]["language"] = "en"  # the other tasks leave it unknown
    tasks["colours"] = {
        "type": "multimodal_classification", "source": {"kind": "local", "path": "data/raw/colours"},
        "read": {"format": "parquet"}, "columns": {"text": "text", "image": "image", "label": "label"}, "labels": list(COLOURS),
    }  # fmt: skip
    write_splits(root, "colours", _colour_rows(root, sum(sizes)), sizes)
    return tasks


def _project(root: Path, tasks: dict[str, Any], tracking_uri: str) -> Config:
    train = {"max_steps": 12, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 2e-3, "bf16": False, "logging_steps": 4}
    params = write_project(
        root, tasks,
        model={"backbone_config": TINY_BERT, "max_length": 64},
        tracking={"uri": tracking_uri, "experiment": f"registry-{root.name}"},
        finetune={"doc_stride": 16},  # extractive QA windows in max_length 64
        multitask={**train, "tasks": list(TEXT_TYPES)},
        fusion={**train, "tasks": ["colours"], "baselines": False, "method": "concat", "fusion_dim": 16,
                "image_weights": None, "image_config": TINY_VIT},
        evaluate={"models": ["multitask", "fusion"], "curves": False},
        register={"name": f"unitask-{root.name}"},
    )  # fmt: skip
    return load_config(params)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Server) -> Config:
    """A project with a trained multi-task model, fusion model and comparison, whose tracking URI is
    the server (training is tracked locally meanwhile, while the server boots)."""
    import torch

    from unitask.evaluation.stage import evaluate
    from unitask.training.fusion import fusion
    from unitask.training.multitask import multitask

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("served")
        tasks = _data(root)
        cfg = _project(root, tasks, "sqlite:///mlflow/mlflow.db")
        multitask(cfg)
        fusion(cfg, "colours")
        evaluate(cfg)
    finally:
        torch.set_num_threads(threads)
    return _project(root, tasks, mlflow_server.url)


def _mixed_rows(cfg: Config) -> list[dict[str, Any]]:
    """One test row per task (as the served model takes them) and two rows it cannot answer."""
    from unitask.registry.examples import example_rows

    types = {name: task.type for name, task in cfg.tasks.items()}
    rows = example_rows(cfg, {name: "" for name in cfg.tasks}, types)
    return [*rows, {"task": "no_such_task", "text": "hello"}, {"task": "classification"}]


def _local_outputs(cfg: Config, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the bundled model folders answer in this process (no MLflow): the served outputs' reference."""
    from unitask.inference import Router, load_predictor
    from unitask.registry.stage import served_folders

    return Router({name: load_predictor(folder) for name, folder in served_folders(cfg).items()}).predict(rows)


def _assert_close(served: Any, local: Any, where: str = "outputs") -> None:
    """`served` equals `local` in structure and values, floats within 1e-5 (JSON and float32 noise)."""
    if isinstance(local, float):
        assert served == pytest.approx(local, abs=1e-5), where
    elif isinstance(local, dict):
        assert isinstance(served, dict) and set(served) == set(local), (where, served, local)
        for key in local:
            _assert_close(served[key], local[key], f"{where}.{key}")
    elif isinstance(local, list):
        assert isinstance(served, list) and len(served) == len(local), (where, served, local)
        for i, (s, v) in enumerate(zip(served, local)):
            _assert_close(s, v, f"{where}[{i}]")
    else:
        assert served == local, (where, served, local)


def _check_outputs(cfg: Config, rows: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    """Each output has its task type's shape and equals the local predictor's (floats to 1e-5)."""
    assert len(outputs) == len(rows)
    _assert_close(outputs, _local_outputs(cfg, rows))  # every type: labels, scores, values, tags, spans
    by_task = {row["task"]: out for row, out in zip(rows[:-2], outputs)}  # the last two rows are bad
    for name in ("classification", "pair_classification", "colours"):
        out = by_task[name]
        assert out["label"] in cfg.tasks[name].labels, out
        assert set(out["scores"]) == set(cfg.tasks[name].labels) and sum(out["scores"].values()) == pytest.approx(1.0)
    assert isinstance(by_task["regression"]["value"], float)
    ner = by_task["token_classification"]
    assert len(ner["tags"]) == len(rows[[r["task"] for r in rows].index("token_classification")]["text"].split())
    assert isinstance(ner["entities"], list)
    qa = by_task["extractive_qa"]
    assert {"answer", "start", "end", "score"} <= set(qa) and isinstance(qa["answer"], str)
    assert "unknown task 'no_such_task'" in outputs[-2]["error"]
    assert "text" in outputs[-1]["error"]  # the missing field, named in its own row


def test_register_load_by_alias_and_predict_every_task_over_http(served: Config, mlflow_server: Server) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from unitask.registry import register

    cfg = served
    name = cfg.register.name
    # the models were trained against the local store (see `served`); their LoggedModels, on the server too
    with stage_run(cfg, "multitask"):
        bundles = {"multitask": log_trained_model("multitask", cfg.path(cfg.multitask.output), {})}
    with stage_run(cfg, "fusion", "colours"):
        bundles["fusion"] = log_trained_model("fusion-colours", cfg.path(cfg.fusion.output) / "colours", {})
    record = register(cfg)
    assert record["decision"] == "promoted" and record["version"] == 1 and record["reason"] == "no champion yet"
    assert record["decided_on"] == "validation" and record["gate"]["split"] == "validation"
    assert set(record["scores"]) == {"validation", "test"}
    assert record["gate"]["candidate"]["tasks"] == record["scores"]["validation"]
    assert record["routes"] == {**{t: "multitask" for t in TEXT_TYPES}, "colours": "fusion"}
    assert json.loads(cfg.path("reports/register.json").read_text()) == record

    mlflow.set_tracking_uri(mlflow_server.url)
    client = MlflowClient()
    version = client.get_model_version_by_alias(name, "champion")
    assert version.version == "1" and set(version.aliases) == {"champion", "challenger"}
    assert float(version.tags["unitask.validation_score.colours"]) == record["scores"]["validation"]["colours"]
    assert float(version.tags["unitask.test_score.colours"]) == record["scores"]["test"]["colours"]
    assert version.tags["unitask.gate_split"] == "validation"
    _check_card(cfg, version.description, record)
    run = client.get_run(record["run_id"])
    assert run.data.tags["unitask.gate.decision"] == "promoted" and run.data.metrics["gate.promoted"] == 1.0
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"model_card.md", "gate.json"} <= artifacts
    assert {a: version.tags[f"unitask.bundles.{a}"] for a in bundles} == bundles  # the LoggedModels it holds
    (pyfunc,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                            filter_string=f"source_run_id = '{record['run_id']}'")  # fmt: skip
    assert pyfunc.tags["unitask.bundles.fusion"] == bundles["fusion"]  # the registered pyfunc's LoggedModel too

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.metadata.get_input_schema().input_names() == ["task", "text", "text_pair", "image"]
    assert model.metadata.saved_input_example_info is not None
    rows = _mixed_rows(cfg)
    _check_outputs(cfg, rows, model.predict(pd.DataFrame(rows)))

    again = register(cfg)  # nothing changed: no new version
    assert again["decision"] == "unchanged" and again["version"] == 1
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


def _check_card(cfg: Config, card: str, record: dict[str, Any]) -> None:
    """The card's facts are this project's: config, saved tokenizer, saved weights, prepared data."""
    from safetensors.torch import load_file

    assert card.startswith(f"# Model card: {cfg.register.name}") and "## Known limits" in card
    assert "English" not in card and "MiniLM" not in card  # the encoder here is a tiny random BERT
    assert "randomly initialised from model.backbone_config" in card and "model_type bert, num_hidden_layers 2" in card
    assert "- Casing: uncased (from the saved tokenizer" in card  # the packaged MiniLM tokenizer lowercases
    assert "- Languages: en; unknown for " in card and "set tasks.<name>.language" in card
    summary = json.loads(cfg.path(cfg.multitask.metrics).read_text())
    weights = load_file(cfg.path(cfg.fusion.output) / "colours" / "model.safetensors")
    fusion_params = sum(t.numel() for t in weights.values())
    counted = f"- Parameters: multitask {summary['parameters']['encoder'] + summary['parameters']['heads']:,}, fusion {fusion_params:,}."
    assert counted in card
    assert "| classification | classification | multitask | local path data/raw/synthetic | en | 48 / 16 / 16 |" in card
    colours = record["scores"]
    assert f"| {colours['validation']['colours']:.4f} | {colours['test']['colours']:.4f} |" in card
    assert "Decision on **validation** scores: **promoted to champion**" in card
    assert "- test: nothing; its scores are reported" in card


def _shift_comparison(cfg: Config, changes: dict[str, float]) -> None:
    """Move the served models' main metric of some tasks (not QA) on validation in evaluate's comparison,
    the gate's input, and the other way on test: the gate must follow validation alone."""
    from unitask.evaluation.metrics import MAIN_METRIC

    path = cfg.path(cfg.evaluate.output) / "comparison.json"
    table = json.loads(path.read_text())
    for task, delta in changes.items():
        model = "fusion" if task == "colours" else "multitask"
        main = MAIN_METRIC[cfg.tasks[task].type]
        table["validation"][task][model][main] += delta
        table["test"][task][model][main] -= 3 * delta
    path.write_text(json.dumps(table))


def test_the_gate_in_the_registry_keeps_the_champion_unless_a_version_beats_it(served: Config, mlflow_server: Server) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from unitask.registry import register

    cfg = served
    name = cfg.register.name
    first = register(cfg)  # version 1 is champion (or already was, when run after the test above)
    mlflow.set_tracking_uri(mlflow_server.url)
    client = MlflowClient()
    assert client.get_model_version_by_alias(name, "champion").version == str(first["version"])

    _shift_comparison(cfg, {"classification": +0.2, "colours": -0.05})  # better on average, one task regresses
    regressed = register(cfg)
    assert regressed["decision"] == "not promoted" and regressed["reason"].startswith("colours drops by 0.0500")
    assert client.get_model_version_by_alias(name, "challenger").version == str(regressed["version"])
    assert client.get_model_version_by_alias(name, "champion").version == str(first["version"])

    _shift_comparison(cfg, {"classification": -0.205, "colours": +0.05})  # worse on average, within tolerance
    worse = register(cfg)
    assert worse["decision"] == "not promoted" and "does not beat the champion" in worse["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == str(first["version"])

    _shift_comparison(cfg, {"classification": +0.105, "regression": +0.05})  # better, nothing regresses
    better = register(cfg)
    assert better["decision"] == "promoted" and better["champion_before"] == first["version"]
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == str(better["version"]) and set(champion.aliases) == {"champion", "challenger"}
    assert better["gate"]["deltas"]["classification"] == pytest.approx(0.1)


def test_mlflow_models_serve_answers_a_mixed_batch(served: Config, mlflow_server: Server, tmp_path: Path) -> None:
    from unitask.registry import register

    cfg = served
    register(cfg)
    port = free_port()
    # the scoring server runs `uvicorn` from PATH: this environment's
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": mlflow_server.url, "OMP_NUM_THREADS": "1"}
    serving = Server(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{cfg.register.name}@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        port, "/ping", tmp_path / "serve.log", env=env,
    )  # fmt: skip
    try:
        rows = _mixed_rows(cfg)
        request = urllib.request.Request(
            f"{serving.url}/invocations",
            data=json.dumps({"dataframe_records": rows}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            outputs = json.loads(response.read())["predictions"]
    finally:
        serving.stop()
    _check_outputs(cfg, rows, outputs)
