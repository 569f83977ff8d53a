"""The Kubeflow driver: the compiled spec, a local run with kfp's SubprocessRunner, submit."""

from __future__ import annotations

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from conftest import CHAIN_TIMEOUT, REPO, TINY_BERT, classification_task, keyword_rows, tiny_llama, write_project
from unitask.cli import main

SECRET_URI = "postgresql://mlflow:pl4nted-Mlflow-S3cret@db.internal/mlflow"
SECRET_KEY = "pl4nted-Aws-S3cret-Key"


def plant_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "pl4nted-Aws-Key-Id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


def assert_no_secrets(text: str) -> None:
    for value in (SECRET_URI, "pl4nted-Mlflow-S3cret", "pl4nted-Aws-Key-Id", SECRET_KEY):
        assert value not in text


def image_task(root: Path) -> dict[str, Any]:
    """A text+image task from a local folder: a CSV of questions naming 4 PNG files."""
    from PIL import Image

    folder = root / "data" / "external" / "vqa"
    (folder / "images").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(folder / "images" / f"{i}.png")
    pd.DataFrame(
        [{"question": f"is shape {i} red?", "image_id": i % 4, "answer": ["yes", "no"][i % 2]} for i in range(40)]
    ).to_csv(folder / "train.csv", index=False)
    return {
        "type": "multimodal_classification",
        "source": {"kind": "local", "path": "data/external/vqa"},
        "read": {"format": "csv", "files": {"train": "train.csv"}, "image_path": "images/{image_id}.png"},
        "columns": {"text": "question", "image": "image", "label": "answer"},
        "labels": ["yes", "no"],
    }


def tiny_project(root: Path, rows: dict[str, list[dict[str, str]]], extra: dict[str, Any] | None = None, **sections: Any) -> Path:
    """CSV tasks under root/data/external, a tiny BERT from config, a few steps of training."""
    tasks = dict(extra or {})
    for name, data in rows.items():
        path = root / "data" / "external" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(data).to_csv(path, index=False)
        tasks[name] = classification_task(f"data/external/{name}.csv")
    sections.setdefault("model", {"backbone_config": TINY_BERT, "max_length": 32})
    sections.setdefault("tracking", {"uri": "sqlite:///mlflow/mlflow.db"})
    sections.setdefault("prepare", {"max_rows": 50})
    sections.setdefault("pretrain", {"max_steps": 2, "batch_size": 8, "bf16": False, "heldout_fraction": 0.2})
    sections.setdefault("llm", {"tasks": []})  # a real decoder LLM: tests/test_llm.py; here the component has no task
    sections.setdefault("finetune", {
        "max_steps": 3, "batch_size": 8, "bf16": False, "eval_strategy": "steps", "eval_steps": 3,
        "logging_steps": 1, "early_stopping_patience": None,
    })  # fmt: skip
    return write_project(root, tasks, **sections)


def compiled(path: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    text = path.read_text()
    spec, platform = yaml.safe_load_all(text)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], text


# ---- the compiled pipeline -------------------------------------------------------------------


def test_compiled_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    plant_secrets(monkeypatch)
    params = tiny_project(
        tmp_path,
        {"alpha": keyword_rows(20), "beta": keyword_rows(20)},
        kubeflow={
            "image": "registry.example/ml/unitask",
            "tag": "t1",
            "node_selector": {"cloud.example/gpu": "h100"},
            "tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}],
            "finetune_parallelism": 2,
            "stages": {"pretrain": {"gpus": 2, "memory_limit": "64Gi"}, "validate": {"caching": False}},
            "s3_secret": {"name": "team-s3", "keys": {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY"}},
        },
    )
    out = tmp_path / "compiled.yaml"
    assert main(["pipeline", "compile", "--params", str(params), "--output", str(out), "--set", "prepare.max_rows=7"]) == 0
    spec, k8s, text = compiled(out)
    assert_no_secrets(text)

    executors = spec["deploymentSpec"]["executors"]
    stages = ("prepare", "validate", "pretrain", "baseline", "finetune", "multitask", "fusion", "llm", "evaluate", "register")
    assert set(executors) == {"exec-plan", *(f"exec-{name}" for name in stages)}
    for executor in executors.values():
        assert executor["container"]["image"] == "registry.example/ml/unitask:t1"
        assert "unitask.kubeflow.runtime" in executor["container"]["command"][-1]
        assert "pip install" not in " ".join(executor["container"]["command"])  # kfp comes with the image
    resources = {name: executors[f"exec-{name}"]["container"]["resources"] for name in stages}
    accelerator = resources["pretrain"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "2"
    for name in ("finetune", "multitask", "fusion", "llm"):
        assert resources[name]["accelerator"]["resourceCount"] == "1"
        assert resources[name]["resourceCpuRequest"] == "8" and resources[name]["resourceMemoryRequest"] == "32Gi"
    for name in ("prepare", "validate", "baseline", "evaluate", "register"):
        assert "accelerator" not in resources[name]
    assert resources["pretrain"]["resourceCpuRequest"] == "8" and resources["pretrain"]["resourceMemoryRequest"] == "32Gi"
    assert resources["pretrain"]["resourceMemoryLimit"] == "64Gi"
    assert resources["prepare"]["resourceCpuRequest"] == "2" and resources["prepare"]["resourceMemoryRequest"] == "8Gi"

    dag = spec["root"]["dag"]["tasks"]
    assert set(dag) == {"plan", "for-loop-1", "condition-2", *stages} - {"finetune", "register"}
    assert dag["prepare"]["retryPolicy"] == {
        "backoffDuration": "30s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s", "maxRetryCount": 2,
    }  # fmt: skip
    assert "retryPolicy" not in dag["validate"]  # a failed gate is not transient
    assert dag["pretrain"]["retryPolicy"]["maxRetryCount"] == 2
    assert dag["validate"]["cachingOptions"] == {}  # enableCache: false (protobuf drops false)
    assert dag["evaluate"]["cachingOptions"] == {}  # its gate reads the registry: never cached
    for name in ("plan", "prepare", "pretrain", "baseline", "multitask", "fusion"):
        assert dag[name]["cachingOptions"] == {"enableCache": True}
    for name in ("pretrain", "baseline", "multitask", "fusion"):
        assert "validate" in dag[name]["dependentTasks"]  # the data gate
        assert dag[name]["retryPolicy"]["maxRetryCount"] == 2
    assert {"baseline", "for-loop-1", "multitask", "fusion"} <= set(dag["evaluate"]["dependentTasks"])
    collected = dag["evaluate"]["inputs"]["artifacts"]["finetune_reports"]["taskOutputArtifact"]
    assert collected == {"outputArtifactKey": "pipelinechannel--finetune-reports", "producerTask": "for-loop-1"}
    assert spec["components"]["comp-evaluate"]["inputDefinitions"]["artifacts"]["finetune_reports"]["isArtifactList"]

    # register runs only when evaluate's gate passes
    condition = dag["condition-2"]
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    register = spec["components"]["comp-condition-2"]["dag"]["tasks"]["register"]
    assert register["cachingOptions"] == {} and register["retryPolicy"]["maxRetryCount"] == 2
    assert register["inputs"]["artifacts"]["evaluation"]["componentInputArtifact"] == "pipelinechannel--evaluate-evaluation"

    loop = dag["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["finetune"]
    assert inner["cachingOptions"] == {"enableCache": True} and inner["retryPolicy"]["maxRetryCount"] == 2
    assert {"pretrain", "validate"} <= set(loop["dependentTasks"])

    for name in ("pretrain", "finetune", "multitask", "fusion"):
        assert k8s[f"exec-{name}"]["nodeSelector"] == {"labels": {"cloud.example/gpu": "h100"}}
        assert k8s[f"exec-{name}"]["tolerations"] == [{"effect": "NoSchedule", "key": "gpu", "operator": "Equal", "value": "yes"}]
    for name in ("prepare", "validate", "baseline", "evaluate", "register"):
        assert "nodeSelector" not in k8s[f"exec-{name}"] and "tolerations" not in k8s[f"exec-{name}"]
    for name in stages:
        secrets = {s["secretName"]: s["keyToEnv"] for s in k8s[f"exec-{name}"]["secretAsEnv"]}
        assert secrets["unitask-mlflow"] == [{"envVar": "MLFLOW_TRACKING_URI", "secretKey": "tracking_uri"}]
        assert {e["envVar"] for e in secrets["team-s3"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {"params", "seed"} and inputs["seed"]["defaultValue"] == 7
    written = yaml.safe_load(inputs["params"]["defaultValue"])
    assert set(written["tasks"]) == {"alpha", "beta"} and written["prepare"] == {"max_rows": 7}  # --set reaches it
    assert written["finetune"]["early_stopping_patience"] is None and written["finetune"]["max_steps"] == 3  # an int
    assert written["tracking"] == {"uri": "sqlite:///mlflow/mlflow.db"}  # as written, never the env's
    assert written["kubeflow"]["tag"] == "t1"  # a pod launching a distributed job builds it from this section
    for name, component in spec["components"].items():  # every component takes the config, nothing else
        if name.startswith("comp-") and "executorLabel" in component:
            assert {"params", "seed", "pipeline_run"} <= set(component["inputDefinitions"]["parameters"]), name
    # the stages' MLflow runs nest under one parent per Kubeflow run: each gets kfp's job id
    assert dag["prepare"]["inputs"]["parameters"]["pipeline_run"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_every_pod_loads_the_config_compiled_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Config a pod loads from the compiled `params` equals the Config the pipeline was compiled
    from, for every component (all but the keys that shape pods or the workspace's own layout)."""
    from unitask.config import load_config
    from unitask.kubeflow.runtime import load_params

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_project(tmp_path, {"alpha": keyword_rows(20)}, finetune={"epochs": 32, "early_stopping_patience": None})
    out = tmp_path / "compiled.yaml"
    assert main(["pipeline", "compile", "--params", str(params), "--output", str(out), "--set", "seed=11"]) == 0
    spec, _, _ = compiled(out)
    compiled_in = load_config(params, ["seed=11"])
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    executors = [n for n, c in spec["components"].items() if "executorLabel" in c]
    assert len(executors) == 11
    for name in executors:
        pod = load_params(defaults["params"]["defaultValue"], int(defaults["seed"]["defaultValue"]), tmp_path / name)
        assert pod.model_dump(exclude={"paths"}) == compiled_in.model_dump(exclude={"paths"}), name
        assert pod.finetune.epochs == 32 and isinstance(pod.finetune.epochs, float)
    # a planted change is caught: the comparison is not vacuous
    changed = load_params(defaults["params"]["defaultValue"].replace('"epochs": 32', '"epochs": 31'), 11, tmp_path / "x")
    assert changed.model_dump(exclude={"paths"}) != compiled_in.model_dump(exclude={"paths"})


def test_pods_contain_paths(tmp_path: Path) -> None:
    """A pod may read its workspace and its input artifacts only: a path elsewhere is refused."""
    from types import SimpleNamespace

    from unitask.errors import ConfigError
    from unitask.kubeflow.runtime import load_params

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    text = yaml.safe_dump({"tasks": {"t": classification_task("data/x.csv")}})
    cfg = load_params(text, 1, tmp_path / "ws", (SimpleNamespace(path=str(artifact)),))
    assert cfg.path(str(artifact / "file")) and cfg.path("data/x.csv")
    with pytest.raises(ConfigError, match="outside the project"):
        cfg.path("/etc/passwd")
    escaped = yaml.safe_dump({"tasks": {"t": classification_task("/etc/passwd")}})
    with pytest.raises(ConfigError, match="outside the project"):
        load_params(escaped, 1, tmp_path / "ws2")


def test_default_params_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's own params.yaml (six real tasks) compiles, with the default GPU placement."""
    plant_secrets(monkeypatch)
    out = tmp_path / "unitask.yaml"
    assert main(["pipeline", "compile", "--params", str(REPO / "params.yaml"), "--output", str(out)]) == 0
    spec, k8s, text = compiled(out)
    assert_no_secrets(text)
    assert spec["pipelineInfo"]["name"] == "unitask"
    assert k8s["exec-finetune"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert "easy_vqa" in yaml.safe_load(spec["root"]["inputDefinitions"]["parameters"]["params"]["defaultValue"])["tasks"]


def test_kubeflow_config_overrides_keep_stage_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unitask.config import load_config

    params = write_project(tmp_path, {"t": classification_task("x.csv")})
    kf = load_config(params, ["kubeflow.stages.pretrain.cpu=4", "kubeflow.stages.finetune.memory_limit=40Gi"]).kubeflow
    assert (kf.stages.pretrain.cpu, kf.stages.pretrain.gpus, kf.stages.pretrain.memory) == ("4", 1, "32Gi")
    assert kf.stages.finetune.memory_limit == "40Gi" and kf.stages.validate.retries == 0
    assert kf.stages.multitask.gpus == 1 and kf.stages.fusion.gpus == 1 and not kf.stages.evaluate.caching
    assert main(["pipeline", "compile", "--params", str(params), "--set", "kubeflow.stages.serve.gpus=1"]) == 2
    assert "kubeflow.stages.serve: unknown key; allowed here: prepare, validate, pretrain, baseline, finetune" in capsys.readouterr().err
    assert main(["pipeline", "compile", "--params", str(params), "--set", "kubeflow.mlflow_secret.keys={uri: TRACKING}"]) == 2
    assert "kubeflow.mlflow_secret: keys must map one secret key to MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert not (tmp_path / "pipelines").exists()


# ---- local runs ------------------------------------------------------------------------------


def run_outputs(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("unitask-")]
    return run


def executor_output(task_dir: Path) -> dict[str, Any]:
    return json.loads((task_dir / "executor_output.json").read_text())


def reports_of(task_dir: Path, name: str = "reports") -> Path:
    """The paths.reports folder inside a task's `reports` artifact (paths relative to the project root)."""
    return task_dir / name / "reports"


@pytest.mark.timeout(CHAIN_TIMEOUT)
@pytest.mark.slow
def test_run_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole chain with kfp's SubprocessRunner: every output lands, MLflow has each stage's run, the
    gate lets register make version 1 champion. The text+image task's files travel in the Dataset
    (validate checks them, fusion trains on them); finetune and multitask skip it. A tiny decoder LLM
    trains on beta, and register.routes has it serve beta in the registered model."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    llm = {"tasks": ["beta"], "model": str(tiny_llama(tmp_path / "tiny-llama")), "max_steps": 2, "batch_size": 4,
           "bf16": False, "shots": 0, "max_input_tokens": 24, "max_length": 64, "max_eval_rows": 5, "lora": {"last_layers": None}}
    params = tiny_project(
        tmp_path, {"alpha": keyword_rows(60), "beta": keyword_rows(60)}, {"vqa": image_task(tmp_path)}, llm=llm,
        register={"routes": {"beta": "llm"}},
        multitask={"max_steps": 3, "batch_size": 8, "bf16": False, "logging_steps": 1},
        fusion={"tasks": ["vqa"], "image_weights": None, "max_steps": 2, "batch_size": 8, "bf16": False, "fusion_dim": 16, "attention_heads": 2,
                "image_config": {"model_type": "vit", "image_size": 16, "patch_size": 8, "hidden_size": 16,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}},
    )  # fmt: skip
    out = tmp_path / "kfp"
    assert main(["pipeline", "run-local", "--params", str(params), "--output", str(out), "--cache"]) == 0
    run = run_outputs(out)
    assert f"outputs\t{run}" in capsys.readouterr().out

    dataset = run / "prepare" / "dataset" / "prepared"
    for task in ("alpha", "beta"):
        rows = sum(len(pd.read_parquet(dataset / task / f"{s}.parquet")) for s in ("train", "validation", "test"))
        assert rows == 50  # prepare.max_rows
    assert len(list((run / "prepare" / "dataset" / "raw" / "vqa").rglob("*.png"))) == 4
    assert not (run / "prepare" / "dataset" / "raw" / "alpha").exists()  # text rows name no files
    report = (run / "validate" / "report").read_text()
    assert "alpha" in report and "passed" in report
    assert (run / "validate" / "data_docs" / "vqa" / "index.html").is_file()
    gate = executor_output(run / "validate")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert gate["alpha.passed"] == 1 and gate["beta.rows_checked"] == 50
    assert gate["vqa.passed"] == 1 and gate["vqa.expectations.failed_error"] == 0  # images found

    encoder = run / "pretrain" / "encoder"
    assert (encoder / "config.json").is_file() and (encoder / "model.safetensors").is_file()
    assert "heldout.perplexity_after" in executor_output(run / "pretrain")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    baseline = reports_of(run / "baseline") / "predictions" / "baseline"
    assert {p.name for p in baseline.iterdir()} == {"alpha.jsonl", "beta.jsonl", "validation"}
    assert {p.name for p in (baseline / "validation").iterdir()} == {"alpha.jsonl", "beta.jsonl"}

    tuned = {}
    for iteration in sorted(run.glob("for-loop-*-iteration-*")):
        outputs = executor_output(iteration / "finetune")["artifacts"]
        task = outputs["finetuned"]["artifacts"][0]["metadata"]["task"]
        tuned[task] = outputs["metrics"]["artifacts"][0]["metadata"]
        model = iteration / "finetune" / "finetuned"
        assert (model / "model.safetensors").is_file() and json.loads((model / "labels.json").read_text())["task"] == task
        assert (reports_of(iteration / "finetune") / "predictions" / "finetune" / f"{task}.jsonl").is_file()
        matrix = outputs["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
        assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["neg", "pos"]
        assert sum(map(sum, (row["row"] for row in matrix["rows"]))) == 5  # the test split's rows
    assert set(tuned) == {"alpha", "beta"}

    multitask = executor_output(run / "multitask")["artifacts"]
    assert multitask["multitask_model"]["artifacts"][0]["metadata"]["tasks"] == ["alpha", "beta"]
    assert (run / "multitask" / "multitask_model" / "unitask-model.json").is_file()
    assert json.loads((reports_of(run / "multitask") / "multitask.json").read_text())["tasks"] == ["alpha", "beta"]
    assert (run / "fusion" / "fusion_model" / "vqa" / "unitask-model.json").is_file()
    assert {p.name for p in (reports_of(run / "fusion") / "predictions").iterdir()} == {"fusion", "fusion_text", "fusion_image"}

    evaluated = executor_output(run / "evaluate")
    assert evaluated["parameterValues"]["Output"] is True  # no champion yet: the gate passes
    comparison = json.loads((run / "evaluate" / "evaluation" / "reports" / "evaluate" / "comparison.json").read_text())
    for split in ("validation", "test"):
        assert set(comparison[split]["alpha"]) == {"baseline", "finetune", "multitask"}
        assert set(comparison[split]["beta"]) == {"baseline", "finetune", "multitask", "llm", "llm_zeroshot"}
        assert set(comparison[split]["vqa"]) == {"fusion", "fusion_text", "fusion_image"}
        for task in ("alpha", "beta"):  # the metric the finetune component logged is the one its predictions score
            logged = tuned[task][f"{task}.{split}.accuracy"]
            assert logged == pytest.approx(comparison[split][task]["finetune"]["accuracy"]), (split, task)
    assert (run / "evaluate" / "evaluation" / "reports" / "multitask_comparison.json").is_file()
    scores = evaluated["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert scores["test.alpha.multitask.accuracy"] == comparison["test"]["alpha"]["multitask"]["accuracy"]
    assert scores["gate.promote"] == 1
    assert "Registry gate: <b>promote</b>" in (run / "evaluate" / "comparison").read_text()
    registered = executor_output(run / "register")["artifacts"]
    assert registered["metrics"]["artifacts"][0]["metadata"]["version"] == 1
    assert registered["card"]["artifacts"][0]["metadata"]["decision"] == "promoted"
    card = (run / "register" / "card").read_text()
    assert "alpha" in card and "tiny-llama" in card  # the LLM that serves beta is on the card

    with sqlite3.connect(tmp_path / "mlflow" / "mlflow.db") as db:  # the project's store, not a workspace's
        stages = {v for (v,) in db.execute("select value from tags where key = 'unitask.stage'")}
        aliases = db.execute("select alias, version from registered_model_aliases").fetchall()
        (parent,) = db.execute("select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                               "where t.key = 'unitask.pipeline_driver' and t.value = 'kubeflow-local'").fetchall()
        nested_under = db.execute("select distinct value from tags where key = 'mlflow.parentRunId'").fetchall()
        routes = dict(db.execute("select key, value from params where key like 'route.%'").fetchall())
    assert {"prepare", "validate", "pretrain", "baseline", "finetune", "multitask", "fusion", "llm", "evaluate", "register"} <= stages
    assert parent[1] == "FINISHED" and nested_under == [(parent[0],)]  # one parent over every component's runs
    assert sorted(aliases) == [("challenger", 1), ("champion", 1)]
    assert routes == {"route.alpha": "multitask", "route.beta": "llm", "route.vqa": "fusion"}

    # Again with the local cache: the training tasks are reused; evaluate (never cached) runs again and
    # its gate holds, since the same scores do not beat the champion they made: register does not run.
    assert main(["pipeline", "run-local", "--params", str(params), "--output", str(out), "--cache"]) == 0
    second = next(p for p in out.iterdir() if p.is_dir() and p.name.startswith("unitask-") and p != run)
    assert {p.name for p in second.iterdir() if p.is_dir()} == {"evaluate"}
    assert executor_output(second / "evaluate")["parameterValues"]["Output"] is False


def test_validation_failure_stops_local_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    skewed = [{"text": f"example {i} is {'good' if i % 6 else 'bad'}", "label": "pos" if i % 6 else "neg"} for i in range(60)]
    params = tiny_project(
        tmp_path,
        {"skewed": skewed},
        validate={"severity": {"class_balance": "error"}, "class_balance_min_ratio": 0.9},
    )
    out = tmp_path / "kfp"
    assert main(["pipeline", "run-local", "--params", str(params), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "unitask: error: kubeflow local run" in err and "validate" in err and "Traceback" not in err.split("unitask: error")[-1]
    run = run_outputs(out)
    assert (run / "prepare" / "dataset").is_dir()
    assert not (run / "pretrain").exists() and not list(run.glob("for-loop-*"))


# ---- submit ----------------------------------------------------------------------------------


class StubKfp(BaseHTTPRequestHandler):
    """Just enough of the Kubeflow Pipelines v2beta1 API for kfp.Client to start a run."""

    requests: list[tuple[str, str, Any]] = []

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(("GET", self.path, None))
        self._reply({"multi_user": False} if "healthz" in self.path else {})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path.endswith("/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        else:
            self._reply({"run_id": "run-42", "display_name": body["display_name"], "experiment_id": body["experiment_id"]})

    def log_message(self, *args: Any) -> None:
        pass


def test_submit_to_stub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    plant_secrets(monkeypatch)
    params = tiny_project(tmp_path, {"alpha": keyword_rows(20)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StubKfp.requests = []
    try:
        host = f"http://127.0.0.1:{server.server_port}"
        argv = ["pipeline", "submit", "--params", str(params), "--host", host, "--experiment", "nightly", "--no-cache",
                "--set", "prepare.max_rows=5"]  # fmt: skip
        assert main(argv) == 0
    finally:
        server.shutdown()
    assert "run\trun-42" in capsys.readouterr().out
    posts = {path.rsplit("/", 1)[-1]: body for method, path, body in StubKfp.requests if method == "POST"}
    assert posts["experiments"]["display_name"] == "nightly"
    run = posts["runs"]
    assert run["experiment_id"] == "exp-1" and run["display_name"].startswith("unitask-")
    assert yaml.safe_load(run["runtime_config"]["parameters"]["params"])["prepare"] == {"max_rows": 5}
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "unitask"
    tasks = run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())  # --no-cache
    assert_no_secrets(json.dumps(StubKfp.requests))


def test_submit_unreachable_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    params = tiny_project(tmp_path, {"alpha": keyword_rows(20)})
    assert main(["pipeline", "submit", "--params", str(params), "--host", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"cannot submit to http://127.0.0.1:{port}" in err and "Traceback" not in err
