"""What a run names in MLflow: the experiment's kind, the pipeline parent its stage runs nest under, the
git commit, the data version (dataset inputs with DVC's md5), metrics as <split>/<task>/<metric>, and
the model as a LoggedModel linked to its metrics. All through a real sqlite store."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
import yaml
from conftest import text_project

from unitask.baselines import baseline
from unitask.config import load_config
from unitask.tracking import (
    COMMIT_TAG,
    DIRTY_TAG,
    KIND,
    KIND_TAG,
    NOTE_TAG,
    PIPELINE_ENV,
    PIPELINE_TAG,
    configure,
    dvc_md5,
    log_trained_model,
    pipeline,
    pipeline_parent,
    pipeline_run,
    stage_run,
    tracking_uri,
)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    return load_config(text_project(tmp_path, "classification"))


def client(cfg):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    return mlflow.MlflowClient()


def runs(cfg):
    c = client(cfg)
    return c.search_runs([c.get_experiment_by_name("unitask").experiment_id])


def test_a_new_experiment_is_a_model_training_experiment_with_a_description(cfg):
    configure(cfg)
    experiment = client(cfg).get_experiment_by_name("unitask")
    assert experiment.tags[KIND_TAG] == KIND == "custom_model_development"
    assert "`validation/<task>/<metric>`" in experiment.tags[NOTE_TAG]


def test_an_existing_experiment_gets_the_kind_it_lacks_but_keeps_one_set_by_hand(cfg):
    c = client(cfg)
    bare = c.create_experiment("unitask")
    configure(cfg)
    assert c.get_experiment(bare).tags[KIND_TAG] == KIND
    c.set_experiment_tag(bare, KIND_TAG, "genai_development")  # a user's choice in the UI
    c.set_experiment_tag(bare, NOTE_TAG, "mine")
    configure(cfg)
    assert (c.get_experiment(bare).tags[KIND_TAG], c.get_experiment(bare).tags[NOTE_TAG]) == ("genai_development", "mine")


def test_a_stage_run_by_hand_is_top_level_and_names_its_commit(cfg):
    subprocess.run(["git", "init", "-q", str(cfg.root)], check=True)
    subprocess.run(["git", "-C", str(cfg.root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)  # fmt: skip
    head = subprocess.run(["git", "-C", str(cfg.root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with stage_run(cfg, "prepare", "toy"):
        pass
    (run,) = runs(cfg)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags[COMMIT_TAG] == head and run.data.tags[DIRTY_TAG] == "true"  # params.yaml, data: untracked
    (cfg.root / "dvc.lock").write_text("stages: {}\n")
    subprocess.run(["git", "-C", str(cfg.root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(cfg.root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "y"], check=True)
    (cfg.root / "dvc.lock").write_text("stages: {changed: {}}\n")  # what dvc repro does while it runs
    with stage_run(cfg, "prepare", "toy"):
        pass
    assert runs(cfg)[0].data.tags[DIRTY_TAG] == "false"


def test_the_stages_of_one_pipeline_run_nest_under_one_parent_that_the_first_stage_creates(cfg):
    pipeline_run("kfp-1234", driver="kubeflow")
    try:
        with stage_run(cfg, "prepare", "toy"):
            pass
        with pytest.raises(RuntimeError), stage_run(cfg, "validate", "toy"):
            raise RuntimeError("planted")
        with stage_run(cfg, "baseline", "toy"):
            pass
    finally:
        os.environ.pop(PIPELINE_ENV)
    with stage_run(cfg, "evaluate"):  # outside a pipeline: top-level
        pass
    by_name = {r.info.run_name: r for r in runs(cfg)}
    parent = by_name["pipeline:kubeflow:kfp-1234"]
    assert parent.data.tags[PIPELINE_TAG] == parent.data.tags["unitask.kubeflow.run_id"] == "kfp-1234"
    assert len(parent.data.tags["unitask.config.sha256"]) == 64 and "unitask.params_file.sha256" in parent.data.tags
    assert {n for n, r in by_name.items() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id} == {
        "prepare:toy", "validate:toy", "baseline:toy"}
    assert "mlflow.parentRunId" not in by_name["evaluate"].data.tags
    assert parent.info.status == "FAILED"  # a stage failed: the parent says so, a later stage does not undo it


def test_a_driver_owns_its_parent_and_ends_it(cfg):
    with pipeline(cfg, "dvc") as parent:
        with stage_run(cfg, "prepare", "toy"):
            pass
        assert client(cfg).get_run(parent).info.status == "RUNNING"  # the stage does not end it
    assert os.environ.get(PIPELINE_ENV) is None
    assert client(cfg).get_run(parent).info.status == "FINISHED"
    child = next(r for r in runs(cfg) if r.info.run_name == "prepare:toy")
    assert child.data.tags["mlflow.parentRunId"] == parent
    with pytest.raises(SystemExit), pipeline(cfg, "dvc") as second:
        raise SystemExit(1)
    assert client(cfg).get_run(second).info.status == "KILLED"


def test_stages_that_start_at_once_agree_on_one_parent(cfg):
    experiment = configure(cfg)
    pipeline_run("race", driver="kubeflow")
    found, barrier = [], threading.Barrier(4)

    def find():
        barrier.wait()
        found.append(pipeline_parent(cfg, experiment)[0])

    try:
        threads = [threading.Thread(target=find) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        os.environ.pop(PIPELINE_ENV)
    assert len(set(found)) == 1
    assert [r.info.run_id for r in runs(cfg)] == found[:1]  # the losers' parents are deleted


def test_baseline_logs_its_data_metrics_and_model(cfg):
    import mlflow

    baseline(cfg, "toy")
    (run,) = runs(cfg)
    inputs = {(d.dataset.name, t.value) for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert inputs == {("toy/train", "training"), ("toy/validation", "validation"), ("toy/test", "test")}
    rows = {d.dataset.name: yaml.safe_load(d.dataset.profile)["num_rows"] for d in run.inputs.dataset_inputs}
    assert rows == {"toy/train": 160, "toy/validation": 40, "toy/test": 40}
    assert {"test/toy/macro_f1", "validation/toy/macro_f1", "test/toy/accuracy"} <= run.data.metrics.keys()
    assert not any(k.startswith("test.") for k in run.data.metrics)  # one naming scheme only
    (model,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert (model.name, model.source_run_id, str(model.status)) == ("baseline-toy", run.info.run_id, "READY")
    linked = {(m.key, m.dataset_name) for m in model.metrics}
    assert ("test/toy/macro_f1", "toy/test") in linked and ("validation/toy/macro_f1", "toy/validation") in linked
    assert mlflow.artifacts.list_artifacts(f"models:/{model.model_id}")[0].path == "model.joblib"


def test_the_dataset_digest_is_dvcs_md5_while_the_data_is_what_dvc_locked(cfg, tmp_path):
    folder = cfg.path(cfg.paths.prepared) / "toy"
    files = [p for p in folder.rglob("*") if p.is_file()]
    out = {"path": "data/prepared/toy", "hash": "md5", "md5": "0123456789abcdef0123456789abcdef.dir",
           "size": sum(p.stat().st_size for p in files), "nfiles": len(files)}  # fmt: skip
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare@toy": {"outs": [out]}}}))
    assert dvc_md5(cfg, folder) == "0123456789abcdef0123456789abcdef"
    baseline(cfg, "toy")
    (run,) = runs(cfg)
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == {"0123456789abcdef0123456789abcdef"}
    (folder / "test.parquet").write_bytes((folder / "test.parquet").read_bytes() + b"x")  # changed since the lock
    assert dvc_md5(cfg, folder) is None


def test_prepare_logs_its_raw_source_with_the_md5_of_data_dvc(tmp_path, monkeypatch):
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    rows = [{"text": f"example {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(60)]
    (tmp_path / "data/raw/toy").mkdir(parents=True)
    (tmp_path / "data/raw/toy/toy.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    from conftest import classification_task, write_project

    cfg = load_config(write_project(tmp_path, {"toy": classification_task("toy.csv")}, tracking={"uri": "sqlite:///mlflow/mlflow.db"}))
    raw = tmp_path / "data/raw"
    files = [p for p in raw.rglob("*") if p.is_file()]
    out = {"md5": "fedcba9876543210fedcba9876543210.dir", "size": sum(p.stat().st_size for p in files),
           "nfiles": len(files), "hash": "md5", "path": "data/raw"}  # fmt: skip
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [out]}))
    from unitask.data.prepare import prepare

    prepare(cfg, ["toy"])
    (run,) = runs(cfg)
    (source,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in source.tags}
    assert (source.dataset.name, source.dataset.digest, tags["mlflow.data.context"]) == ("toy/raw", "fedcba9876543210fedcba9876543210", "source")
    assert tags["unitask.rows"] == "60"


def test_a_model_folder_leads_back_to_the_logged_models_holding_its_files(cfg, tmp_path):
    from unitask.tracking import logged_models_of

    output = tmp_path / "fusion"  # a folder per task, as fusion.output holds them
    ids = {}
    for task in ("a", "b"):
        (output / task).mkdir(parents=True)
        (output / task / "weights.bin").write_bytes(task.encode())
        with stage_run(cfg, "fusion", task):
            ids[task] = log_trained_model(f"fusion-{task}", output / task, {"test": {task: {"macro_f1": 0.5}}})
    assert logged_models_of(output) == [ids["a"], ids["b"]]
    (output / "b" / "weights.bin").write_bytes(b"retrained, not logged")
    assert logged_models_of(output) == [ids["a"]]
