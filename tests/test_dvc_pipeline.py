"""The DVC driver: the default pipeline (smoke profile) in a scratch clone, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from conftest import CHAIN_TIMEOUT, REPO
from unitask.config import load_config

BIN = Path(sys.executable).parent
COPY = ["params.yaml", "dvc.yaml", "data.dvc", ".dvcignore", "src"]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        base[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) and value else value
    return base


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clone")
    for name in COPY:
        src = REPO / name
        (shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, root / name))
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), yaml.safe_load((REPO / "tests/smoke.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([str(BIN / "unitask"), "dvc"], root)  # dvc.yaml for the smoke tasks and settings
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([str(BIN / "unitask"), "data", "fetch"], root)
    _run([str(BIN / "dvc"), "commit", "--force", "-q", "data.dvc"], root)
    return root


@pytest.mark.timeout(CHAIN_TIMEOUT)
def test_repro_runs_the_chain_then_is_a_no_op(clone):
    assert (clone / "data.dvc").read_text() == (REPO / "data.dvc").read_text()
    _run([str(BIN / "unitask"), "repro"], clone)  # `dvc repro` as one pipeline run in MLflow, as `make demo` runs it
    params = yaml.safe_load((clone / "params.yaml").read_text())
    cfg = load_config(clone / "params.yaml")
    for task in params["tasks"]:
        summary = json.loads((clone / "reports/prepare" / f"{task}.json").read_text())
        assert sum(summary["rows"].values()) <= 240
        assert json.loads((clone / "reports/validate" / f"{task}.json").read_text())["status"] != "failed"
    assert (clone / "models/pretrained/model.safetensors").is_file()
    for task in cfg.finetune_tasks():
        assert (clone / "models/finetune" / task / "model.safetensors").is_file()
        assert "test" in json.loads((clone / "reports/finetune" / f"{task}.json").read_text())
    multitask = json.loads((clone / "reports/multitask.json").read_text())
    assert multitask["tasks"] == cfg.multitask_tasks() and "mean_score" in multitask["test"]
    assert (clone / "models/multitask/unitask-model.json").is_file()
    comparison = json.loads((clone / "reports/multitask_comparison.json").read_text())
    assert comparison["mean"]["tasks"] == len(cfg.multitask_tasks())
    # one saved model answers every default text task
    # ... and with the fusion model, `unitask predict` answers a mixed batch of every default task
    image = pd.read_parquet(clone / "data/prepared/easy_vqa/test.parquet")["image"].iloc[0]
    rows = [{"task": task, "text": "WIN a prize now in London"} for task in cfg.multitask_tasks()]
    rows.append({"task": "easy_vqa", "text": "what color is the shape?", "image": image})
    (clone / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    predicted = _run([str(BIN / "unitask"), "predict", "--input", "rows.jsonl"], clone)
    answers = [json.loads(line) for line in predicted.splitlines() if line.startswith("{")]
    assert len(answers) == len(rows) and not any("error" in a for a in answers), answers
    assert answers[cfg.multitask_tasks().index("sms_spam")]["label"] in ("ham", "spam")
    assert answers[-1]["label"] in params["tasks"]["easy_vqa"]["labels"]
    _evaluated_and_registered(clone, params)
    second = _run([str(BIN / "dvc"), "repro"], clone)
    assert "Running stage" not in second
    _dvc_shows_the_comparison(clone)
    assert json.loads(_run([str(BIN / "dvc"), "status", "--json"], clone)) == {}
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]  # the stages' reports: plain outs, versioned
    assert "reports/prepare/sms_spam.json" in {out["path"] for out in lock["prepare@sms_spam"]["outs"]}
    assert "reports/multitask_comparison.json" in {out["path"] for out in lock["multitask_comparison"]["outs"]}


def _evaluated_and_registered(clone: Path, params: dict[str, Any]) -> None:
    """evaluate compared every model; register made version 1 champion, which answers every task."""
    import mlflow

    from unitask.registry.examples import example_rows

    comparison = json.loads((clone / "reports/evaluate/comparison.json").read_text())
    for split in ("validation", "test"):
        for task in load_config(clone / "params.yaml").finetune_tasks():
            assert {"finetune", "multitask"} <= set(comparison[split][task]), comparison[split][task]
    record = json.loads((clone / "reports/register.json").read_text())
    assert record["decision"] == "promoted" and record["version"] == 1, record
    assert record["decided_on"] == "validation" and record["gate"]["split"] == "validation", record
    cfg = load_config(clone / "params.yaml")
    mlflow.set_tracking_uri(f"sqlite:///{clone}/mlflow/mlflow.db")
    model = mlflow.pyfunc.load_model(f"models:/{cfg.register.name}@champion")
    rows = example_rows(cfg, record["routes"], {name: task.type for name, task in cfg.tasks.items()})
    outputs = model.predict(rows)
    assert set(record["routes"]) == set(params["tasks"]) and len(outputs) == len(rows)
    assert not [o for o in outputs if "error" in o], outputs
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("unitask.pipeline_driver") == "dvc"]
    assert parent.info.status == "FINISHED" and parent.data.tags["unitask.params_file.sha256"]
    stages = {r.data.tags["unitask.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"prepare", "validate", "pretrain", "baseline", "finetune", "multitask", "evaluate", "register"} <= stages
    finetune = next(r for r in runs if r.data.tags["unitask.stage"] == "finetune")
    task = finetune.data.tags["unitask.task"]
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"][f"prepare@{task}"]["outs"][0]["md5"]
    assert {d.dataset.digest for d in finetune.inputs.dataset_inputs} == {lock.removesuffix(".dir")}  # the DVC data version
    summary = _run([str(BIN / "unitask"), "summary"], clone)
    assert f"Champion: {cfg.register.name} version 1 promoted" in summary and "reports/evaluate/comparison.md" in summary
    shown = _run([str(BIN / "dvc"), "metrics", "show"], clone).splitlines()
    assert max(map(len, shown)) <= 160, "\n".join(shown)  # headline numbers only: a row per model and split
    models = json.loads((clone / "reports/evaluate/report.json").read_text())["models"]
    assert shown[0].split()[1:] == sorted(params["tasks"]) and len(shown) == 1 + 2 * len(models)


def _dvc_shows_the_comparison(clone: Path) -> None:
    """`dvc metrics show`, `dvc plots show`, `dvc exp show` and `dvc exp diff` read evaluate's outputs."""
    dvc = str(BIN / "dvc")
    assert "reports/evaluate/metrics/multitask/test.json" in _run([dvc, "metrics", "show", "--json"], clone)
    shown = subprocess.run([dvc, "plots", "show", "--json"], cwd=clone, capture_output=True, text=True, env=_env())
    assert shown.returncode == 0, shown.stderr
    plots = json.loads(shown.stdout)["data"]
    kinds = {path.split("/")[3] for path in plots if path.startswith("reports/evaluate/plots/")}
    assert {"confusion", "by_model", "loss"} <= kinds, sorted(plots)
    _run(["git", "add", "-A"], clone)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "smoke"], clone)
    experiments = _run([dvc, "exp", "show", "--json"], clone)
    assert "reports/evaluate/metrics/finetune/validation.json" in experiments
    # an experiment beside the committed run; `dvc exp diff` compares the two on one screen
    rate = yaml.safe_load((clone / "params.yaml").read_text())["multitask"]["learning_rate"] * 2.5
    _run([dvc, "exp", "run", "--temp", "-n", "faster", "-S", f"multitask.learning_rate={rate}"], clone)
    diff = _run([dvc, "exp", "diff", "HEAD", "faster"], clone).splitlines()
    assert max(map(len, diff)) <= 160 and any("multitask.learning_rate" in line for line in diff), diff
    assert any(line.startswith("reports/evaluate/metrics/multitask/") for line in diff), diff


@pytest.mark.timeout(CHAIN_TIMEOUT)
def test_kubeflow_local_run_matches_dvc(clone, tmp_path):
    """Parity: `unitask pipeline run-local` (kfp's SubprocessRunner, the same components a cluster runs)
    on the same smoke config and seed trains the same models as the DVC chain: every test prediction
    and every validation/test metric is equal."""
    import time

    _run([str(BIN / "dvc"), "repro"], clone)  # a no-op after the test above; the whole chain when run alone
    started = time.perf_counter()
    out = _run([str(BIN / "unitask"), "pipeline", "run-local", "--output", str(tmp_path / "kfp")], clone)
    print(f"kubeflow local run (smoke profile): {time.perf_counter() - started:.0f} s")
    run = Path(next(line.split("\t", 1)[1] for line in out.splitlines() if line.startswith("outputs\t")))
    # each step's `data` artifact holds what it wrote, at its path in the project
    kfp = {p.relative_to(f).as_posix(): p for f in run.glob("*/data/reports") for p in f.rglob("*.json*")}
    dvc = clone / "reports"

    predictions = sorted(p.relative_to(dvc).as_posix() for p in (dvc / "predictions").rglob("*.jsonl"))
    assert predictions and sorted(p for p in kfp if p.startswith("predictions/")) == predictions
    for name in predictions:
        _same(_lines(kfp[name]), _lines(dvc / name), name)
    metrics = [n for n in kfp if n.startswith(("baseline/", "finetune/")) or n == "multitask.json"]
    assert len(metrics) == 1 + len(list((dvc / "baseline").glob("*.json"))) + len(list((dvc / "finetune").glob("*.json")))
    for name in metrics:
        ours, theirs = json.loads(kfp[name].read_text()), json.loads((dvc / name).read_text())
        _same({k: ours[k] for k in ("validation", "test")}, {k: theirs[k] for k in ("validation", "test")}, name)
    for path in (dvc / "fusion").glob("*.json"):
        name = path.relative_to(dvc).as_posix()
        ours, theirs = json.loads(kfp[name].read_text())["models"], json.loads(path.read_text())["models"]
        assert set(ours) == set(theirs), name
        for model, scores in theirs.items():
            _same({k: ours[model][k] for k in ("validation", "test")}, {k: scores[k] for k in ("validation", "test")}, name)
    name = "evaluate/comparison.json"
    _same(json.loads(kfp[name].read_text()), json.loads((dvc / name).read_text()), name)
    name = "multitask_comparison.json"
    ours, theirs = (json.loads(p.read_text())["tasks"] for p in (kfp[name], dvc / name))
    for rows in (ours, theirs):
        for row in rows.values():
            row.pop("single_task_seconds", None)  # timing
    _same(ours, theirs, name)


def _lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _same(ours: Any, theirs: Any, where: str) -> None:
    """Equal, floats within a tiny tolerance (the same computation, serialized by the same code)."""
    import math

    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), (where, ours, theirs)
        for key in theirs:
            _same(ours[key], theirs[key], f"{where}:{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), (where, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float) and not isinstance(ours, str):
        close = math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(ours) and math.isnan(theirs))
        assert close, (where, ours, theirs)
    else:
        assert ours == theirs, (where, ours, theirs)


def test_a_changed_task_reruns_only_its_data_stages(clone):
    """Its prepare and validate rerun, no other task's; pretraining reads every task, so it and the
    fine-tunes after it rerun too. Reproducing one fine-tune checks every stage upstream of it (every
    task's data stages included) without training the rest of the chain again."""
    original = {name: (clone / name).read_text() for name in ("params.yaml", "dvc.yaml")}
    params = yaml.safe_load(original["params.yaml"])
    params["tasks"]["sms_spam"]["max_rows"] = 120
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    target = [str(BIN / "dvc"), "repro", "finetune@sms_spam"]
    try:
        stale = subprocess.run(target, cwd=clone, capture_output=True, text=True, env=_env())
        # a new task key: the first stage whose dvc.yaml entry names the task's keys (pretrain) refuses to run
        assert stale.returncode != 0 and "is out of date" in stale.stdout + stale.stderr
        _run([str(BIN / "unitask"), "dvc"], clone)
        out = stale.stdout + _run(target, clone)  # the stages before it ran in the first
        assert "Running stage 'prepare@sms_spam'" in out and "Running stage 'validate@sms_spam'" in out
        assert "Running stage 'prepare@bbc_topic'" not in out and "Running stage 'validate@bbc_topic'" not in out
        assert "Running stage 'pretrain'" in out and "Running stage 'finetune@sms_spam'" in out
    finally:
        for name, text in original.items():
            (clone / name).write_text(text)


def _status(clone: Path) -> set[str]:
    return set(json.loads(_run([str(BIN / "dvc"), "status", "--json"], clone)))


def test_a_touched_module_reruns_exactly_the_stages_that_import_it(clone):
    """Code deps come from the imports: a comment in a module makes `dvc status` list exactly the
    stages whose function imports it (checked against the modules a real import of each stage loads)."""

    from unitask.codedeps import imports
    from unitask.stages import STAGES

    _run([str(BIN / "dvc"), "repro"], clone)
    assert _status(clone) == set()
    cfg = load_config(clone / "params.yaml")
    for module in ("unitask.augment.text", "unitask.training.finetune", "unitask.tasks.text"):
        path = clone / "src" / Path(*module.split(".")).with_suffix(".py")
        importers = set()
        for stage in STAGES.values():
            if stage.runs is not None and not stage.runs(cfg):  # no task (the smoke profile's llm): not in dvc.yaml
                continue
            if module in imports(stage.module):
                tasks = stage.per_task(cfg) if stage.per_task else [None]
                importers.update(f"{stage.name}@{t}" if t else stage.name for t in tasks)
        loaded = subprocess.run(  # what importing the stage's module loads at once (a subset: stages import late too)
            [sys.executable, "-c", "import sys, importlib; importlib.import_module(sys.argv[1]); print(sorted(sys.modules))",
             STAGES["finetune"].module], capture_output=True, text=True, check=True,
        ).stdout
        if module in loaded:
            assert module in imports(STAGES["finetune"].module)
        original = path.read_text()
        path.write_text(original + "# touched\n")
        try:
            assert _status(clone) == importers and importers, (module, importers)
        finally:
            path.write_text(original)
        assert _status(clone) == set()


def test_a_tasks_own_settings_rerun_only_that_task(clone):
    """tasks.<task>.finetune belongs to one task: only that task's stages rerun (its data stages read the
    task's declaration, and come out the same), no other task's, and no multi-task model."""
    _run([str(BIN / "dvc"), "repro"], clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    original = (clone / "params.yaml").read_text()
    params["tasks"]["wnut_ner"]["finetune"] = {"epochs": 3}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        _run([str(BIN / "unitask"), "dvc", "--check"], clone)  # the same keys: dvc.yaml is still current
        assert _status(clone) == {"prepare@wnut_ner", "validate@wnut_ner", "finetune@wnut_ner"}
    finally:
        (clone / "params.yaml").write_text(original)
