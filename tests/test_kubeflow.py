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


def steps_of(spec: dict[str, Any], k8s: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """{step name (taskInfo, as DVC names it): its task in the root DAG, its container, its Kubernetes settings}."""
    tasks, containers, placements = {}, {}, {}
    for task in spec["root"]["dag"]["tasks"].values():
        name = task["taskInfo"]["name"]
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        tasks[name], containers[name] = task, spec["deploymentSpec"]["executors"][label]["container"]
        placements[name] = k8s.get(label, {})
    return tasks, containers, placements


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
            "stages": {"pretrain": {"gpus": 2, "memory_limit": "64Gi"}, "validate": {"caching": False}},
            "s3_secret": {"name": "team-s3", "keys": {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY"}},
        },
    )
    out = tmp_path / "compiled.yaml"
    assert main(["pipeline", "compile", "--params", str(params), "--output", str(out), "--set", "prepare.max_rows=7"]) == 0
    spec, k8s, text = compiled(out)
    assert_no_secrets(text)

    dag, containers, placements = steps_of(spec, k8s)
    per_task = [f"{stage}@{task}" for stage in ("prepare", "validate", "finetune") for task in ("alpha", "beta")]
    gpu = ["pretrain", "finetune@alpha", "finetune@beta", "multitask"]  # no LLM task, no text+image task
    small = ["prepare@alpha", "prepare@beta", "validate@alpha", "validate@beta", "baseline", "multitask_comparison",
             "evaluate", "register"]  # fmt: skip
    assert set(dag) == {*per_task, *gpu, *small}
    for container in containers.values():
        assert container["image"] == "registry.example/ml/unitask:t1"
        assert "unitask.kubeflow.runtime" in container["command"][-1]
        assert "pip install" not in " ".join(container["command"])  # kfp comes with the image
    resources = {name: container["resources"] for name, container in containers.items()}
    accelerator = resources["pretrain"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "2"
    for name in gpu[1:]:
        assert resources[name]["accelerator"]["resourceCount"] == "1"
        assert resources[name]["resourceCpuRequest"] == "8" and resources[name]["resourceMemoryRequest"] == "32Gi"
    for name in small:
        assert "accelerator" not in resources[name]
        assert "nodeSelector" not in placements[name] and "tolerations" not in placements[name]
    assert resources["pretrain"]["resourceCpuRequest"] == "8" and resources["pretrain"]["resourceMemoryLimit"] == "64Gi"
    assert resources["prepare@alpha"]["resourceCpuRequest"] == "2" and resources["prepare@alpha"]["resourceMemoryRequest"] == "8Gi"

    assert dag["prepare@alpha"]["retryPolicy"] == {
        "backoffDuration": "30s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s", "maxRetryCount": 2,
    }  # fmt: skip
    assert "retryPolicy" not in dag["validate@alpha"]  # a failed gate is not transient
    for name in ("validate@alpha", "evaluate", "register"):  # validate: set above; the others: declared
        assert dag[name]["cachingOptions"] == {}, name  # enableCache: false (protobuf drops false)
    for name in ("prepare@alpha", "pretrain", "baseline", "finetune@beta", "multitask"):
        assert dag[name]["cachingOptions"] == {"enableCache": True}
        assert dag[name]["retryPolicy"]["maxRetryCount"] == 2

    # the graph follows the deps: a task waits on the steps whose outputs it reads, by their artifacts
    names = {task: name for name, task in ((n, t["componentRef"]["name"].removeprefix("comp-")) for n, t in dag.items())}
    upstream = {name: {names[d] for d in task.get("dependentTasks", [])} for name, task in dag.items()}
    assert upstream["validate@alpha"] == {"prepare@alpha"}
    assert upstream["finetune@alpha"] == {"prepare@alpha", "validate@alpha", "pretrain"}
    assert upstream["pretrain"] == {*per_task[:4]}  # every train split, after the gate
    assert upstream["evaluate"] == {"baseline", "finetune@alpha", "finetune@beta", "multitask"}
    assert upstream["register"] == {"evaluate", "multitask", *per_task[:4]}  # the card reads the data and the gate
    reads = dag["finetune@alpha"]["inputs"]["artifacts"]
    assert reads["pretrain_model"]["taskOutputArtifact"] == {"outputArtifactKey": "model", "producerTask": "pretrain"}
    assert reads["prepare__alpha_data"]["taskOutputArtifact"]["outputArtifactKey"] == "data"

    for name in gpu:
        assert placements[name]["nodeSelector"] == {"labels": {"cloud.example/gpu": "h100"}}
        assert placements[name]["tolerations"] == [{"effect": "NoSchedule", "key": "gpu", "operator": "Equal", "value": "yes"}]
    for name in dag:
        secrets = {s["secretName"]: s["keyToEnv"] for s in placements[name]["secretAsEnv"]}
        assert secrets["unitask-mlflow"] == [{"envVar": "MLFLOW_TRACKING_URI", "secretKey": "tracking_uri"}]
        assert {e["envVar"] for e in secrets["team-s3"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {"params", "seed"} and inputs["seed"]["defaultValue"] == 7
    written = yaml.safe_load(inputs["params"]["defaultValue"])
    assert set(written["tasks"]) == {"alpha", "beta"} and written["prepare"] == {"max_rows": 7}  # --set reaches it
    assert written["finetune"]["early_stopping_patience"] is None and written["finetune"]["max_steps"] == 3  # an int
    assert written["tracking"] == {"uri": "sqlite:///mlflow/mlflow.db"}  # as written, never the env's
    assert written["kubeflow"]["tag"] == "t1"  # a pod launching a distributed job builds it from this section
    for name, component in spec["components"].items():  # every component takes the config
        if name.startswith("comp-") and "executorLabel" in component:
            assert {"params", "seed", "pipeline_run"} <= set(component["inputDefinitions"]["parameters"]), name
    # the stages' MLflow runs nest under one parent per Kubeflow run: each gets kfp's job id
    assert dag["prepare@alpha"]["inputs"]["parameters"]["pipeline_run"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


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
    assert len(executors) == 9  # {prepare,validate,finetune}@alpha, pretrain, baseline, multitask(_comparison), evaluate, register
    for name in executors:
        pod = load_params(defaults["params"]["defaultValue"], int(defaults["seed"]["defaultValue"]), tmp_path / name)
        assert pod.model_dump(exclude={"paths"}) == compiled_in.model_dump(exclude={"paths"}), name
        assert pod.finetune.epochs == 32 and isinstance(pod.finetune.epochs, float)
    # a planted change is caught: the comparison is not vacuous
    changed = load_params(defaults["params"]["defaultValue"].replace('"epochs": 32', '"epochs": 31'), 11, tmp_path / "x")
    assert changed.model_dump(exclude={"paths"}) != compiled_in.model_dump(exclude={"paths"})


def test_pods_contain_paths(tmp_path: Path) -> None:
    """A pod may read its workspace (which holds copies of its inputs) and nothing else: an input
    artifact's own folder and any other path are refused."""
    from unitask.errors import ConfigError
    from unitask.kubeflow.runtime import load_params

    artifact = tmp_path / "artifact"
    artifact.mkdir()
    text = yaml.safe_dump({"tasks": {"t": classification_task("data/x.csv")}})
    cfg = load_params(text, 1, tmp_path / "ws")
    assert cfg.path("data/x.csv") == (tmp_path / "ws" / "data" / "x.csv").resolve()
    for elsewhere in ("/etc/passwd", str(artifact / "file")):
        with pytest.raises(ConfigError, match="outside the project"):
            cfg.path(elsewhere)
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
    dag, _, placements = steps_of(spec, k8s)
    assert placements["finetune@sms_spam"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert "easy_vqa" in yaml.safe_load(spec["root"]["inputDefinitions"]["parameters"]["params"]["defaultValue"])["tasks"]

    # the same graph as DVC's own reading of the project's dvc.yaml: every step, every edge
    from dvc.repo import Repo

    names = {t["componentRef"]["name"].removeprefix("comp-"): name for name, t in dag.items()}
    kfp_edges = {(name, names[d]) for name, t in dag.items() for d in t.get("dependentTasks", [])}
    dvc_graph = Repo(str(REPO)).index.graph
    dvc_edges = {(a.addressing, b.addressing) for a, b in dvc_graph.edges if b.addressing != "data.dvc"}
    assert set(dag) == {s.addressing for s in dvc_graph.nodes} - {"data.dvc"} and len(dag) == 25
    assert kfp_edges == dvc_edges and len(kfp_edges) > 40


def test_kubeflow_config_overrides_keep_stage_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """kubeflow.stages.<stage> sets only the keys it names; the rest is the stage's declared pod."""
    from unitask.config import load_config
    from unitask.kubeflow.pods import pod
    from unitask.kubeflow.settings import kubeflow_settings

    params = write_project(tmp_path, {"t": classification_task("x.csv")})
    kf = kubeflow_settings(load_config(params, ["kubeflow.stages.pretrain.cpu=4", "kubeflow.stages.finetune.memory_limit=40Gi"]))
    assert (pod(kf, "pretrain").cpu, pod(kf, "pretrain").gpus, pod(kf, "pretrain").memory) == ("4", 1, "32Gi")
    assert pod(kf, "finetune").memory_limit == "40Gi" and pod(kf, "finetune").gpus == 1 and pod(kf, "validate").retries == 0
    assert pod(kf, "multitask").gpus == 1 and pod(kf, "fusion").gpus == 1 and not pod(kf, "evaluate").caching
    assert main(["pipeline", "compile", "--params", str(params), "--set", "kubeflow.stages.serve.gpus=1"]) == 2
    assert "kubeflow.stages.serve: no such stage\n  fix: stages: prepare, validate, pretrain, baseline, finetune" in capsys.readouterr().err
    assert main(["pipeline", "compile", "--params", str(params), "--set", "kubeflow.mlflow_secret.keys={uri: TRACKING}"]) == 2
    assert "kubeflow.mlflow_secret: keys must map one secret key to MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert not (tmp_path / "pipelines").exists()


# ---- local runs ------------------------------------------------------------------------------


def run_outputs(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("unitask-")]
    return run


def executor_output(task_dir: Path) -> dict[str, Any]:
    return json.loads((task_dir / "executor_output.json").read_text())


def step_dir(run: Path, step: str) -> Path:
    """A step's folder in a local run: kfp names the task after its component (finetune@alpha -> finetune-alpha)."""
    return run / step.replace("@", "-").replace("_", "-")


def metrics_of(run: Path, step: str) -> dict[str, float]:
    return executor_output(step_dir(run, step))["artifacts"]["metrics"]["artifacts"][0]["metadata"]


@pytest.mark.timeout(CHAIN_TIMEOUT)
@pytest.mark.slow
def test_run_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole graph with kfp's SubprocessRunner: every step's outputs land in its artifacts at their
    paths in the project, MLflow has each stage's run under one parent, register makes version 1
    champion. The text+image task's images are fetched where a step reads them (validate, fusion,
    register). A tiny decoder LLM trains on beta, and register.routes has it serve beta."""
    from unitask.config import load_config

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
    cfg = load_config(params)
    out = tmp_path / "kfp"
    assert main(["pipeline", "run-local", "--params", str(params), "--output", str(out), "--cache"]) == 0
    run = run_outputs(out)
    assert f"outputs\t{run}" in capsys.readouterr().out

    def data(step: str) -> Path:  # what a step wrote, at its paths in the project
        return step_dir(run, step) / "data"

    def model(step: str) -> Path:
        return step_dir(run, step) / "model"

    for task in ("alpha", "beta"):
        prepared = data(f"prepare@{task}") / cfg.paths.prepared / task
        assert sum(len(pd.read_parquet(prepared / f"{s}.parquet")) for s in ("train", "validation", "test")) == 50
    assert metrics_of(run, "validate@beta")["rows_checked"] == 50
    assert metrics_of(run, "validate@vqa")["expectations.failed_error"] == 0  # its images were found
    assert (data("validate@vqa") / cfg.paths.reports / "data_docs" / "vqa" / "index.html").is_file()

    assert (model("pretrain") / cfg.pretrain.output / "model.safetensors").is_file()
    assert "heldout.perplexity_after" in metrics_of(run, "pretrain")
    baseline = data("baseline") / cfg.paths.reports / "predictions" / "baseline"
    assert {p.name for p in baseline.iterdir()} == {"alpha.jsonl", "beta.jsonl", "validation"}
    for task in ("alpha", "beta"):
        folder = model(f"finetune@{task}") / cfg.finetune.output / task
        assert (folder / "model.safetensors").is_file() and json.loads((folder / "labels.json").read_text())["task"] == task
        assert (data(f"finetune@{task}") / cfg.paths.reports / "predictions" / "finetune" / f"{task}.jsonl").is_file()
    assert set(json.loads((model("multitask") / cfg.multitask.output / "unitask-model.json").read_text())["tasks"]) == {"alpha", "beta"}
    assert (model("fusion") / cfg.fusion.output / "vqa" / "unitask-model.json").is_file()
    assert {p.name for p in (data("fusion") / cfg.paths.reports / "predictions").iterdir()} == {"fusion", "fusion_text", "fusion_image"}
    assert (data("multitask_comparison") / cfg.multitask.comparison).is_file()

    comparison = json.loads((data("evaluate") / cfg.evaluate.output / "comparison.json").read_text())
    for split in ("validation", "test"):
        assert set(comparison[split]["alpha"]) == {"baseline", "finetune", "multitask"}
        assert set(comparison[split]["beta"]) == {"baseline", "finetune", "multitask", "llm", "llm_zeroshot"}
        assert set(comparison[split]["vqa"]) == {"fusion", "fusion_text", "fusion_image"}
        for task in ("alpha", "beta"):  # the metric the fine-tune step logged is the one its predictions score
            logged = metrics_of(run, f"finetune@{task}")[f"{split}.accuracy"]
            assert logged == pytest.approx(comparison[split][task]["finetune"]["accuracy"]), (split, task)
    assert metrics_of(run, "evaluate")["test.alpha.multitask.accuracy"] == comparison["test"]["alpha"]["multitask"]["accuracy"]
    decision = json.loads((data("register") / cfg.register.output).read_text())
    assert decision["decision"] == "promoted" and metrics_of(run, "register")["version"] == 1

    with sqlite3.connect(tmp_path / "mlflow" / "mlflow.db") as db:  # the project's store, not a workspace's
        stages = {v for (v,) in db.execute("select value from tags where key = 'unitask.stage'")}
        aliases = db.execute("select alias, version from registered_model_aliases").fetchall()
        (parent,) = db.execute("select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                               "where t.key = 'unitask.pipeline_driver' and t.value = 'kubeflow-local'").fetchall()
        nested_under = db.execute("select distinct value from tags where key = 'mlflow.parentRunId'").fetchall()
        routes = dict(db.execute("select key, value from params where key like 'route.%'").fetchall())
        (card,) = db.execute("select description from model_versions where version = 1").fetchone()
    assert {"prepare", "validate", "pretrain", "baseline", "finetune", "multitask", "fusion", "llm", "evaluate", "register"} <= stages
    assert parent[1] == "FINISHED" and nested_under == [(parent[0],)]  # one parent over every component's runs
    assert sorted(aliases) == [("challenger", 1), ("champion", 1)]
    assert routes == {"route.alpha": "multitask", "route.beta": "llm", "route.vqa": "fusion"}
    assert "alpha" in card and "tiny-llama" in card  # the LLM that serves beta is on the model card

    # Again with the local cache: every training step is reused; evaluate and register (declared never
    # cached) run again, and register makes no new version of unchanged models
    assert main(["pipeline", "run-local", "--params", str(params), "--output", str(out), "--cache"]) == 0
    second = next(p for p in out.iterdir() if p.is_dir() and p.name.startswith("unitask-") and p != run)
    assert {p.name for p in second.iterdir() if p.is_dir()} == {"evaluate", "register"}
    again = json.loads((second / "register" / "data" / cfg.register.output).read_text())
    assert again["version"] == 1 and again["decision"] != "promoted"


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
    assert "unitask: error: kubeflow local run" in err and "Traceback" not in err.split("unitask: error")[-1]
    assert "Inner task failed: 'validate-skewed'" in err  # the gate's step
    run = run_outputs(out)
    assert (step_dir(run, "prepare@skewed") / "data").is_dir()
    assert not (run / "pretrain").exists() and not (run / "finetune-skewed").exists()


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
