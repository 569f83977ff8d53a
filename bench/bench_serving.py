"""Serving throughput of the unified pyfunc against separate per-task fine-tuned models, on mixed-task traffic.

    OMP_NUM_THREADS=<n> HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_serving.py \
        [--rows-per-task 200] [--request-sizes 1 32] [--max-single 100] [--repeats 3]

Traffic: `--rows-per-task` test rows of each text task served (bbc_topic, movie_sentiment, sms_spam,
trec_coarse, wnut_ner), shuffled together with a fixed seed, sent as requests of each `--request-sizes`
rows (size 1 sends only the first `--max-single` rows). Two ways to serve it, on the same torch threads:
- `unified pyfunc`: models/multitask saved as the registered MLflow pyfunc (UnitaskModel) and loaded
  with mlflow.pyfunc.load_model; each request is one DataFrame of mixed-task rows;
- `separate models`: one transformers pipeline per models/finetune/<task> folder (text-classification,
  with function_to_apply="none" for regression; token-classification with aggregation_strategy="simple"),
  device=-1, truncation at 128 tokens, and a router that splits each request by task and calls each
  task's pipeline on its rows with batch_size 32.
Each repeat (sides interleaved A, B, A, B, ...) loads the side afresh (load s), sends one warm-up
request, then times all requests (rows/s, ms/request). Weights MB is the parameter bytes of every
loaded torch model; RSS MB is the process's resident-memory growth over the side's first load and
traffic (weights are memory-mapped, so they count once touched; the unified side goes first and also
pays the first-use allocations). Checks: rows answered with "error" (must be 0) and the share of
classification rows where both sides give the same label (they are different models). Prints a
Markdown table of medians.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import mlflow.pyfunc
import pandas as pd
import psutil
import torch
from transformers import AutoTokenizer, pipeline

from unitask.config import load_config
from unitask.inference import read_manifest
from unitask.registry.examples import as_frame, input_row
from unitask.registry.pyfunc import UnitaskModel, signature
from unitask.tasks.text import read_split

REPO = Path(__file__).resolve().parents[1]
SIDES = ["unified pyfunc", "separate models"]
BATCH_SIZE = 32  # the unified predictor's batch size, used for each pipeline too

Serve = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def mixed_rows(cfg: Any, tasks: dict[str, str], per_task: int, seed: int) -> list[dict[str, Any]]:
    """`per_task` test rows of each task as served input rows, shuffled together."""
    frames = [
        pd.DataFrame([input_row(cfg, name, kind, r) for r in read_split(cfg, name, "test").head(per_task).to_dict("records")])
        for name, kind in tasks.items()
    ]
    return pd.concat(frames).sample(frac=1, random_state=seed).to_dict("records")


def weight_bytes(models: list[torch.nn.Module]) -> int:
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters())


def load_unified(path: str) -> tuple[Serve, list[torch.nn.Module]]:
    model = mlflow.pyfunc.load_model(path)
    predictor = model.unwrap_python_model().router.predictors["multitask"]
    return lambda rows: list(model.predict(as_frame(rows))), [predictor.model]


def load_separate(folders: dict[str, Path], tasks: dict[str, str], max_length: int) -> tuple[Serve, list[torch.nn.Module]]:
    pipes, calls = {}, {}
    for name, kind in tasks.items():
        # the token-classification pipeline truncates at model_max_length (it takes no truncation kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folders[name], model_max_length=max_length)
        if kind == "token_classification":
            pipes[name] = pipeline("token-classification", model=str(folders[name]), tokenizer=tokenizer, device=-1, aggregation_strategy="simple")
            calls[name] = {}
        else:
            pipes[name] = pipeline("text-classification", model=str(folders[name]), tokenizer=tokenizer, device=-1)
            calls[name] = {"truncation": True, **({"function_to_apply": "none"} if kind == "regression" else {})}

    def answer(kind: str, out: Any) -> dict[str, Any]:
        if kind == "token_classification":
            return {"entities": out}
        return {"value": float(out["score"])} if kind == "regression" else {"label": out["label"], "score": float(out["score"])}

    def serve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any]] = [{"error": "no output"}] * len(rows)
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row["task"], []).append(i)
        for name, index in groups.items():
            try:
                results = pipes[name]([rows[i]["text"] for i in index], batch_size=BATCH_SIZE, **calls[name])
                answers = [answer(tasks[name], r) for r in results]
            except Exception as exc:  # noqa: BLE001 - as the unified Router: one task's failure is its rows' errors
                answers = [{"error": f"{type(exc).__name__}: {exc}"} for _ in index]
            for i, a in zip(index, answers):
                outputs[i] = a
        return outputs

    return serve, [p.model for p in pipes.values()]


def timed_requests(serve: Serve, requests: list[list[dict[str, Any]]]) -> tuple[float, list[dict[str, Any]]]:
    serve(requests[0])  # warm-up
    outputs: list[dict[str, Any]] = []
    start = time.perf_counter()
    for request in requests:
        outputs += serve(request)
    return time.perf_counter() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--multitask", default=str(REPO / "models/multitask"))
    parser.add_argument("--finetune", default=str(REPO / "models/finetune"))
    parser.add_argument("--rows-per-task", type=int, default=200)
    parser.add_argument("--request-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-single", type=int, default=100, help="rows sent with request size 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = load_config(args.params)
    manifest = read_manifest(Path(args.multitask))
    tasks = {name: spec["type"] for name, spec in manifest["tasks"].items()}
    folders = {name: Path(args.finetune) / name for name in tasks}
    rows = mixed_rows(cfg, tasks, args.rows_per_task, args.seed)
    traffic = {
        size: [rows[i : i + size] for i in range(0, args.max_single if size == 1 else len(rows), size)] for size in args.request_sizes
    }
    process = psutil.Process()

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "pyfunc")
        mlflow.pyfunc.save_model(path=path, python_model=UnitaskModel(), artifacts={"multitask": args.multitask}, signature=signature())
        loaders = {
            SIDES[0]: lambda: load_unified(path),
            SIDES[1]: lambda: load_separate(folders, tasks, int(manifest["max_length"])),
        }
        loads: dict[str, list[float]] = {s: [] for s in SIDES}
        seconds: dict[tuple[str, int], list[float]] = {(s, n): [] for s in SIDES for n in args.request_sizes}
        weights: dict[str, int] = {}
        rss: dict[str, int] = {}
        answers: dict[str, list[dict[str, Any]]] = {}
        keep = []  # the first load of each side stays alive, so that the other side's RSS growth is its own
        for repeat in range(args.repeats):
            for side in SIDES:
                gc.collect()
                before = process.memory_info().rss
                start = time.perf_counter()
                serve, models = loaders[side]()
                loads[side].append(time.perf_counter() - start)
                for size, requests in traffic.items():
                    elapsed, outputs = timed_requests(serve, requests)
                    seconds[side, size].append(elapsed)
                    if size == max(args.request_sizes):
                        answers[side] = outputs
                if repeat == 0:
                    rss[side] = process.memory_info().rss - before
                    weights[side] = weight_bytes(models)
                    keep.append(serve)
                del serve, models

    served = {size: sum(len(r) for r in requests) for size, requests in traffic.items()}
    errors = {side: sum("error" in o for o in outs) for side, outs in answers.items()}
    both = [(u.get("label"), s.get("label")) for r, u, s in zip(rows, *answers.values()) if tasks[r["task"]] == "classification"]
    agree = sum(u == s for u, s in both) / max(len(both), 1)

    print(f"\n{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"{len(rows)} mixed rows ({args.rows_per_task} per task, {len(tasks)} tasks), median of {args.repeats}\n")  # fmt: skip
    print("| side | request size | rows/s | ms/request | load s | weights MB | RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for side in SIDES:
        for size, requests in traffic.items():
            t = statistics.median(seconds[side, size])
            print(f"| {side} | {size} | {served[size] / t:.1f} | {1000 * t / len(requests):.1f} | "
                  f"{statistics.median(loads[side]):.2f} | {weights[side] / 2**20:.0f} | {rss[side] / 2**20:.0f} |")  # fmt: skip
    for size in traffic:
        ratio = statistics.median(seconds[SIDES[1], size]) / statistics.median(seconds[SIDES[0], size])
        print(f"\nrequest size {size}: unified/separate throughput = {ratio:.2f}x", end="")
    print(f"\n\nerrors: {errors}; same label on {len(both)} classification rows: {agree:.1%}")


if __name__ == "__main__":
    main()
