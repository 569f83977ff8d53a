"""`unitask multitask`: task samplers, loss weighting, a tiny joint run over every text task type,
save/load, the comparison with single-task fine-tunes, `unitask predict`, and clear errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_BERT, synthetic_task, write_project, write_splits, logged_model_files

from unitask.cli import main
from unitask.config import load_config
from unitask.errors import ConfigError, DataError
from unitask.training.sampling import TaskBatchSampler, steps_per_epoch, task_probabilities
from unitask.training.weighting import DynamicWeightAverage, UncertaintyWeighting, make_weighting

KINDS = ("classification", "pair_classification", "regression", "token_classification", "extractive_qa")
# type -> (main metric, a floor well above chance: 3 balanced classes ~0.33 macro-F1, 0 otherwise)
FLOORS = {
    "classification": ("macro_f1", 0.9),
    "pair_classification": ("macro_f1", 0.9),
    "regression": ("pearson", 0.8),
    "token_classification": ("f1", 0.9),
    "extractive_qa": ("f1", 80.0),
}
SIZES = (160, 40, 40)


def multitask_project(root: Path, kinds: tuple[str, ...] = KINDS, sizes: tuple[int, int, int] = SIZES, **multitask: Any) -> Path:
    """A project with one synthetic task per type (`t_<type>`), prepared as Parquet; the tiny BERT."""
    tasks = {}
    for i, kind in enumerate(kinds):
        task, rows = synthetic_task(kind, sum(sizes), seed=i + 1)
        if kind == "pair_classification":  # its own keywords and labels, apart from classification's
            swap = {"football": "tennis", "computer": "phone", "pizza": "pasta"}
            rows = [{**r, "text_pair": " ".join(swap.get(w, w) for w in r["text_pair"].split()), "label": f"p_{r['label']}"}
                    for r in rows]
            task["labels"] = [f"p_{label}" for label in task["labels"]]
        name = f"t_{kind}"
        write_splits(root, name, rows, sizes)
        tasks[name] = task
    settings = {"epochs": 10, "batch_size": 16, "learning_rate": 2e-3, "bf16": False, "logging_steps": 5,
                "weighting": "uncertainty", "weighting_lr": 0.05, **multitask}
    return write_project(
        root, tasks,
        model={"backbone_config": TINY_BERT, "max_length": 64},
        tracking={"uri": "sqlite:///mlflow/mlflow.db"},
        finetune={"doc_stride": 16},
        multitask=settings,
    )


# ---- samplers ---------------------------------------------------------------------------------

SIZES_BY_TASK = {"big": 4000, "mid": 900, "small": 100}


def draw(sampler: str, batches: int = 20_000, **kwargs: Any) -> dict[str, float]:
    """Shares of `batches` batches per task, drawn by TaskBatchSampler over several epochs."""
    probabilities = task_probabilities(SIZES_BY_TASK, sampler, **kwargs)
    lengths = [[8] * n for n in SIZES_BY_TASK.values()]
    batch_sampler = TaskBatchSampler(lengths, 16, list(probabilities.values()), steps=batches // 4, seed=3,
                                     round_robin=sampler == "round_robin")
    counts: Counter[int] = Counter()
    for epoch in range(4):
        batch_sampler.set_epoch(epoch)
        counts.update(batch_sampler.task_of(batch[0]) for batch in batch_sampler)
    names = list(SIZES_BY_TASK)
    return {names[k]: n / batches for k, n in counts.items()}


@pytest.mark.parametrize(
    ("sampler", "kwargs", "expected"),
    [
        ("proportional", {}, {"big": 4000 / 5000, "mid": 900 / 5000, "small": 100 / 5000}),
        ("temperature", {"temperature": 2.0}, {"big": 63.25 / 103.25, "mid": 30 / 103.25, "small": 10 / 103.25}),
        # the cap counts big as 900 rows: (900, 900, 100) ** (1/3) -> 9.655, 9.655, 4.642
        ("temperature", {"temperature": 3.0, "cap": 900}, {"big": 9.655 / 23.95, "mid": 9.655 / 23.95, "small": 4.642 / 23.95}),
        ("uniform", {}, {"big": 1 / 3, "mid": 1 / 3, "small": 1 / 3}),
        ("round_robin", {}, {"big": 1 / 3, "mid": 1 / 3, "small": 1 / 3}),
        # rates multiply shares before renormalizing: proportional (4000, 900, 100 * 3) / 5200
        ("proportional", {"rates": {"small": 3.0}}, {"big": 4000 / 5200, "mid": 900 / 5200, "small": 300 / 5200}),
        ("uniform", {"rates": {"big": 0.5}}, {"big": 0.5 / 2.5, "mid": 1 / 2.5, "small": 1 / 2.5}),
    ],
)
def test_sampler_distribution_matches_its_formula(sampler: str, kwargs: dict[str, Any], expected: dict[str, float]) -> None:
    assert task_probabilities(SIZES_BY_TASK, sampler, **kwargs) == pytest.approx(expected, abs=1e-3)
    shares = draw(sampler, **kwargs)
    for name, p in expected.items():
        # 20,000 draws: 4 standard errors of a share p is at most 4 * sqrt(0.25 / 20000) = 0.014
        assert shares.get(name, 0.0) == pytest.approx(p, abs=4 * (p * (1 - p) / 20_000) ** 0.5 + 1e-9), (name, shares)


def test_round_robin_takes_turns_and_batches_hold_one_task() -> None:
    lengths = [[5] * 40, [7] * 10, [3] * 25]
    sampler = TaskBatchSampler(lengths, 8, [1 / 3] * 3, steps=steps_per_epoch([40, 10, 25], 8), seed=1, round_robin=True)
    assert len(sampler) == 5 + 2 + 4
    batches = list(sampler)
    tasks = [sampler.task_of(b[0]) for b in batches]
    assert tasks == [i % 3 for i in range(len(batches))]
    offsets = [0, 40, 50, 75]
    for batch, task in zip(batches, tasks):
        assert all(offsets[task] <= i < offsets[task + 1] for i in batch) and 0 < len(batch) <= 8
    # small task 1 (10 rows) is drawn 4 times: every row once before any repeats
    rows_of_1 = [i for b, t in zip(batches, tasks) if t == 1 for i in b]
    assert sorted(rows_of_1[:10]) == list(range(40, 50))


def test_sampler_is_deterministic_per_epoch() -> None:
    lengths = [[int(x) for x in np.random.default_rng(0).integers(3, 30, 200)], [4] * 50]
    a = TaskBatchSampler(lengths, 16, [0.5, 0.5], steps=20, seed=5)
    b = TaskBatchSampler(lengths, 16, [0.5, 0.5], steps=20, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    drawn = 0
    for epoch in (0, 1):
        b.set_epoch(epoch)
        drawn += sum(len(batch) for batch in b)
    assert sum(a.examples_seen(40)) == drawn and a.epoch == 1


def test_unknown_sampler_or_weighting_names_the_choices(tmp_path: Path) -> None:
    params = multitask_project(tmp_path, ("classification",))
    for key, value, allowed in [("sampler", "temprature", "'temperature'"), ("weighting", "gradnorm", "'uncertainty'")]:
        with pytest.raises(ConfigError) as info:
            load_config(params, [f"multitask.{key}={value}"])
        assert f"multitask.{key}: Input should be" in str(info.value) and allowed in str(info.value)
        assert info.value.exit_code == 2
    with pytest.raises(ConfigError, match="unknown sampler 'x'"):
        task_probabilities({"a": 1}, "x")
    with pytest.raises(ConfigError, match="unknown weighting 'x'"):
        make_weighting("x", ["a"])
    for field in ("rate", "weight"):
        with pytest.raises(ConfigError, match=rf"tasks.t_classification.multitask.{field}: Input should be greater than 0"):
            load_config(params, [f"tasks.t_classification.multitask.{field}=0"])
    with pytest.raises(ConfigError, match=r"multitask.tasks: \['nope'\] are not declared under tasks"):
        load_config(params, ["multitask.tasks=[nope]"])
    with pytest.raises(ConfigError, match="round_robin takes the tasks in turn"):
        load_config(params, ["multitask.sampler=round_robin", "tasks.t_classification.multitask.rate=2"])
    with pytest.raises(ConfigError, match=r"rates: \['other'\] are not among the trained tasks"):
        task_probabilities({"a": 1}, "uniform", rates={"other": 2.0})


# ---- loss weighting ---------------------------------------------------------------------------


def test_uncertainty_weighting_follows_kendall() -> None:
    weighting = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.0, np.log(4.0)]))
    loss = torch.tensor(2.0)
    with torch.no_grad():
        assert float(weighting(0, loss)) == pytest.approx(2.0 / 2 + 0)
        assert float(weighting(1, loss)) == pytest.approx(2.0 / 8 + np.log(4.0) / 2)
    assert weighting.weights() == pytest.approx({"a": 0.5, "b": 0.125})


def test_dwa_weights_from_the_last_two_epochs() -> None:
    weighting = DynamicWeightAverage(["a", "b"], temperature=2.0)
    for epoch_losses in ([4.0, 1.0], [2.0, 1.0]):  # a halves, b stays
        for task, loss in enumerate(epoch_losses):
            weighting(task, torch.tensor(loss))
        assert weighting.weights() == {"a": 1.0, "b": 1.0}  # the first two epochs weigh 1
        weighting.end_epoch()
    ratios = np.array([0.5, 1.0])
    expected = 2 * np.exp(ratios / 2) / np.exp(ratios / 2).sum()
    assert list(weighting.weights().values()) == pytest.approx(expected.tolist())
    assert weighting.weights()["b"] > 1 > weighting.weights()["a"]  # the slower task gets more weight


def test_static_weights_scale_the_loss() -> None:
    weighting = make_weighting("static", ["a", "b"], {"b": 3.0})
    assert float(weighting(1, torch.tensor(2.0))) == 6.0 and float(weighting(0, torch.tensor(2.0))) == 2.0


# ---- a tiny joint run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    """One multi-task run over every text task type (uncertainty weighting), shared by the tests below."""
    from unitask.training.multitask import multitask

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(multitask_project(tmp_path_factory.mktemp("multitask")))
        return cfg, multitask(cfg)
    finally:
        torch.set_num_threads(threads)


def test_tiny_run_lifts_every_task_above_chance(trained: tuple[Any, dict[str, Any]]) -> None:
    cfg, summary = trained
    for kind, (metric, floor) in FLOORS.items():
        name = f"t_{kind}"
        assert summary["main_metrics"][name] == metric
        assert summary["validation"][name][metric] >= floor, (name, summary["validation"][name])
        assert summary["test"][name][metric] >= floor, (name, summary["test"][name])
    assert summary["test"]["mean_score"] >= 0.85
    seen = summary["train"]["examples_seen"]
    assert seen["total"] == sum(v for k, v in seen.items() if k != "total") > 0
    # ten epochs of one pass's worth of batches each
    assert summary["train"]["steps"] == 10 * summary["train"]["steps_per_epoch"]
    assert not cfg.path(cfg.multitask.checkpoints).exists()
    assert json.loads(cfg.path(cfg.multitask.metrics).read_text()) == json.loads(json.dumps(summary))


def test_uncertainty_weights_move_during_training(trained: tuple[Any, dict[str, Any]]) -> None:
    import mlflow
    from mlflow import MlflowClient

    from unitask.tracking import tracking_uri

    cfg, summary = trained
    weights = summary["weighting"]["final_weights"]
    assert all(abs(w - 0.5) > 0.01 for w in weights.values()), weights  # they all start at 1 / (2 exp(0))
    assert len({round(w, 3) for w in weights.values()}) > 1
    mlflow.set_tracking_uri(tracking_uri(cfg))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], filter_string="tags.`unitask.stage` = 'multitask'", output_format="list")
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "weight_t_regression")
    assert len(history) == 10 and history[0].value != history[-1].value  # logged at every evaluation
    per_epoch = client.get_metric_history(run.info.run_id, "eval_t_token_classification_f1")
    assert len(per_epoch) == 10 and per_epoch[-1].value > per_epoch[0].value
    assert len(client.get_metric_history(run.info.run_id, "eval_mean_score")) == 10
    assert run.data.metrics["test/mean_score"] == pytest.approx(summary["test"]["mean_score"])
    assert "loss_t_extractive_qa" in run.data.metrics  # each task's unweighted training loss
    assert "model.safetensors" in logged_model_files(run)


def test_saved_model_answers_every_task_identically_after_loading(trained: tuple[Any, dict[str, Any]]) -> None:
    from unitask.evaluation.metrics import task_metrics
    from unitask.evaluation.predictions import read_predictions
    from unitask.inference import load_predictor
    from unitask.inference.multitask import MultitaskPredictor
    from unitask.models.multitask import load_multitask
    from unitask.tasks.text import read_split

    cfg, summary = trained
    folder = cfg.path(cfg.multitask.output)
    predictor = load_predictor(folder)
    assert isinstance(predictor, MultitaskPredictor)
    assert predictor.tasks == {f"t_{k}": k for k in KINDS}
    model, tokenizer, manifest = load_multitask(folder)
    again = MultitaskPredictor(model, tokenizer, manifest)
    for kind in KINDS:
        name = f"t_{kind}"
        test = read_split(cfg, name, "test")
        rows = [_row(name, kind, r) for r in test.to_dict("records")]
        first, second = predictor.predict(rows), again.predict(rows)
        assert first == second  # two loads, the same outputs to the last bit
        gold, written = read_predictions(cfg, "multitask", name)  # what training wrote for the test split
        validation_gold, validation_written = read_predictions(cfg, "multitask", name, "validation")
        assert len(validation_gold) == len(validation_written) == len(read_split(cfg, name, "validation"))
        main = summary["main_metrics"][name]
        assert task_metrics(kind, validation_gold, validation_written)[main] == pytest.approx(summary["validation"][name][main])
        key = {"regression": "value", "token_classification": "tags", "extractive_qa": "answer"}.get(kind, "label")
        if kind == "regression":
            assert [o[key] for o in first] == pytest.approx([o[key] for o in written], abs=0.05)  # bf16 vs fp32 aside
        else:
            agree = np.mean([a[key] == b[key] for a, b in zip(first, written)])
            assert agree >= 0.95, (name, agree)


def _row(name: str, kind: str, record: dict[str, Any]) -> dict[str, Any]:
    if kind == "token_classification":
        return {"task": name, "text": " ".join(record["tokens"])}
    if kind == "extractive_qa":
        return {"task": name, "text": record["question"], "text_pair": record["context"]}
    row = {"task": name, "text": record["text"]}
    if kind == "pair_classification":
        row["text_pair"] = record["text_pair"]
    return row


def test_predict_cli_answers_every_task_from_one_model(trained: tuple[Any, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = trained
    params = str(cfg.root / "params.yaml")
    cases = {
        "t_classification": ["--text", "the pizza was on the"],
        "t_pair_classification": ["--text", "it is", "--text-pair", "the tennis of the"],
        "t_regression": ["--text", "it was four"],
        "t_token_classification": ["--text", "the bob is in tokyo"],
        "t_extractive_qa": ["--text", "what is the answer?", "--text-pair", "it was the answer two of it"],
    }
    outputs = {}
    for name, args in cases.items():
        assert main(["predict", "--params", params, "--task", name, *args]) == 0
        outputs[name] = json.loads(capsys.readouterr().out)
    assert outputs["t_classification"]["label"] == "food" and set(outputs["t_classification"]["scores"]) == {"sports", "tech", "food"}
    assert outputs["t_pair_classification"]["label"] == "p_sports"
    assert 3.0 < outputs["t_regression"]["value"] < 5.0
    assert outputs["t_token_classification"]["tags"] == ["O", "B-per", "O", "O", "B-loc"]
    assert outputs["t_extractive_qa"]["answer"] == "two"

    assert main(["predict", "--params", params, "--task", "nope", "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert "no saved model answers task 'nope'" in err and "t_regression" in err and "Traceback" not in err
    assert main(["predict", "--params", params, "--task", "t_pair_classification", "--text", "x"]) == 1
    assert "lacks text_pair" in capsys.readouterr().err


def test_predict_cli_reads_json_lines(trained: tuple[Any, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = trained
    rows = cfg.root / "rows.jsonl"
    rows.write_text('{"task": "t_classification", "text": "the computer is"}\n{"text": "four"}\n{"task": "zz", "text": "a"}\n')
    code = main(["predict", "--params", str(cfg.root / "params.yaml"), "--input", str(rows), "--task", "t_regression"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # one row could not be answered; the others are
    assert out[0]["label"] == "tech" and "value" in out[1] and "unknown task 'zz'" in out[2]["error"]


def test_comparison_with_single_task_fine_tunes(trained: tuple[Any, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow
    from mlflow import MlflowClient

    from unitask.atomic import write_json
    from unitask.tracking import tracking_uri

    cfg, summary = trained
    reports = cfg.path(cfg.paths.reports) / "finetune"
    for kind in ("classification", "extractive_qa"):  # two of the five have single-task reports
        metric = FLOORS[kind][0]
        value = 0.5 if kind == "classification" else 50.0
        write_json(reports / f"t_{kind}.json", {"test": {metric: value}, "train": {"seconds": 10.0, "examples": 160, "epochs": 2.0}})
    assert main(["multitask-comparison", "--params", str(cfg.root / "params.yaml")]) == 0
    assert "mean\tsingle-task 0.5000" in capsys.readouterr().out
    result = json.loads(cfg.path(cfg.multitask.comparison).read_text())
    assert result["mean"]["tasks"] == 2 and result["mean"]["single_task"] == pytest.approx(0.5)  # QA's 50.0 -> 0.5
    ours = (summary["test"]["t_classification"]["macro_f1"] + summary["test"]["t_extractive_qa"]["f1"] / 100) / 2
    assert result["mean"]["multitask"] == pytest.approx(ours)
    assert result["tasks"]["t_extractive_qa"]["delta"] == pytest.approx(summary["test"]["t_extractive_qa"]["f1"] - 50.0)
    assert result["missing_single_task"] == ["t_pair_classification", "t_regression", "t_token_classification"]
    assert result["compute"]["single_task"] == {"seconds": 20.0, "examples_seen": 640, "models": 2}
    assert result["compute"]["multitask"]["examples_seen"] == summary["train"]["examples_seen"]["total"]
    table = cfg.path(cfg.multitask.comparison).with_suffix(".md").read_text()
    assert "| t_classification | macro_f1 | 0.500 |" in table and "| single-task fine-tunes | 2 | 20 s | 640 |" in table
    mlflow.set_tracking_uri(tracking_uri(cfg))
    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "comparison")}
    assert artifacts == {"comparison/multitask_comparison.json", "comparison/multitask_comparison.md"}
    assert client.get_run(summary["mlflow_run_id"]).data.metrics["comparison.mean.tasks"] == 2


# ---- errors -----------------------------------------------------------------------------------


def test_a_task_without_training_rows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = multitask_project(tmp_path, ("classification", "regression"))
    train = tmp_path / "data" / "prepared" / "t_regression" / "train.parquet"
    pd.read_parquet(train).iloc[:0].to_parquet(train)
    code = main(["multitask", "--params", str(params)])
    err = capsys.readouterr().err
    assert code == 1 and "tasks.t_regression: the train split has no rows" in err and "fix:" in err
    assert "Traceback" not in err


def test_tasks_must_be_declared_text_tasks(tmp_path: Path) -> None:
    params = multitask_project(tmp_path, ("classification",))
    with pytest.raises(ConfigError, match=r"multitask.tasks: \[.nope.\] are not declared under tasks"):
        load_config(params, ["multitask.tasks=[nope]"])
    with pytest.raises(ConfigError, match="multitask.tasks: the list has duplicates"):
        load_config(params, ["multitask.tasks=[t_classification, t_classification]"])
    with pytest.raises(ConfigError, match="are not text tasks"):
        load_config(params, ["tasks.t_classification.type=multimodal_classification",
                             "tasks.t_classification.columns={text: text, image: image, label: label}",
                             "multitask.tasks=[t_classification]"])


def test_compare_without_reports_says_what_to_run(tmp_path: Path) -> None:
    from unitask.evaluation.multitask_comparison import compare_multitask

    cfg = load_config(multitask_project(tmp_path, ("classification",)))
    with pytest.raises(DataError, match="run `unitask multitask` first"):
        compare_multitask(cfg)


def test_predict_without_a_model_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = multitask_project(tmp_path, ("classification",))
    assert main(["predict", "--params", str(params), "--task", "t_classification", "--text", "x"]) == 2
    assert "predict: no saved model in" in capsys.readouterr().err


@pytest.mark.usefixtures("single_thread")
def test_killed_run_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    """`unitask multitask` SIGKILLed mid-epoch after a checkpoint and run again with --resume draws the
    same batches and weights (the sampler is seeded per epoch; the weighting's state is checkpointed).
    Tolerance: loss weights and validation/test metrics equal to rel 1e-5."""
    from killing import kill_and_resume

    from unitask.tracking import tracking_uri
    from unitask.training.multitask import multitask

    settings = {"epochs": 3, "eval_strategy": "steps", "eval_steps": 7, "weighting": "dwa"}
    kinds = ("classification", "regression")
    straight = multitask(load_config(multitask_project(tmp_path / "straight", kinds, **settings)))

    params = multitask_project(tmp_path / "killed", kinds, **settings)
    cfg = load_config(params)
    killed = kill_and_resume(
        ["multitask", "--params", str(params)],
        checkpoints=cfg.path(cfg.multitask.checkpoints),
        kill_after="checkpoint-28",  # mid-epoch 2 (10 + 10 batches an epoch; a checkpoint every 7 steps)
        tracking_uri=tracking_uri(cfg),
    )
    assert int(killed.resumed_from.rpartition("-")[2]) >= 28
    resumed = json.loads(cfg.path(cfg.multitask.metrics).read_text())
    assert resumed["train"]["steps"] == straight["train"]["steps"] == 60
    assert resumed["train"]["examples_seen"] == straight["train"]["examples_seen"]
    assert resumed["weighting"]["final_weights"] == pytest.approx(straight["weighting"]["final_weights"], rel=1e-5)
    for split in ("validation", "test"):
        for name in straight["tasks"]:
            assert resumed[split][name] == pytest.approx(straight[split][name], rel=1e-5, abs=1e-6), (split, name)
