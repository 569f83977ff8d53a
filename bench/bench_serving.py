"""Serving throughput and latency of the unified multi-task model against separate per-task fine-tuned
models, on mixed-task traffic, at three layers: the bare predictor, the MLflow pyfunc, and HTTP.

    OMP_NUM_THREADS=<n> HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_serving.py \
        [--rows-per-task 200] [--request-sizes 1 32] [--max-single 100] [--repeats 3] [--concurrency 1] [--no-http]

Traffic: `--rows-per-task` test rows of each text task served (bbc_topic, movie_sentiment, sms_spam,
trec_coarse, wnut_ner), shuffled together with a fixed seed, sent as requests of each `--request-sizes`
rows (size 1 sends only the first `--max-single` rows). Two models, each served three ways:
- `unified`: models/multitask (one encoder, a head per task). `bare`: the `Router` over its
  `MultitaskPredictor` called in-process with a list of rows (no pyfunc, no DataFrame); `pyfunc`: the
  registered pyfunc (UnitaskModel) saved with mlflow.pyfunc.save_model and loaded with
  mlflow.pyfunc.load_model, each request one DataFrame; `HTTP`: that saved pyfunc behind
  `mlflow models serve --env-manager local` on 127.0.0.1;
- `separate`: one transformers pipeline per models/finetune/<task> folder (text-classification, with
  function_to_apply="none" for regression; token-classification with aggregation_strategy="simple"),
  device=-1, truncation at 128 tokens, and a router that splits each request by task and calls each
  task's pipeline on its rows with batch_size 32. `bare`: that router in-process; `pyfunc` and `HTTP`:
  the router wrapped in a pyfunc (`SeparateModels`, the five folders its artifacts, the same signature
  as the unified pyfunc) and served the same way, so that both HTTP sides go through the same server,
  JSON parsing and schema enforcement, and a client sends mixed requests to one endpoint either way.
HTTP load comes from a second process (bench/load_client.py): a closed loop of `--concurrency`
keep-alive connections (at most that many requests in flight), one warm-up request per size.
Each repeat (sides interleaved) loads each side afresh (load s; for HTTP the server's start until
/ping answers), sends one warm-up request, then times all requests: rows/s, and the p50 and p95 of the
per-request latency; for in-process sides also the process's CPU time per row (every thread's: on a
busy machine a steadier measure of the work than the wall clock). Memory MB: for in-process sides the process's resident-memory growth over the
side's first load and traffic (weights are memory-mapped, so they count once touched; earlier sides
pay the first-use allocations), for HTTP the server's whole resident memory. Checks: rows answered
with "error" (must be 0), the unified model's labels equal at every layer, and the share of
classification rows where the two models give the same label (they are different models). Prints
Markdown tables of medians over the repeats.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import psutil
import torch
from transformers import AutoTokenizer, pipeline

from unitask.config import load_config
from unitask.inference import Router, load_predictor, read_manifest
from unitask.registry.examples import as_frame, input_row
from unitask.registry.pyfunc import UnitaskModel, as_rows, signature
from unitask.tasks.text import read_split

REPO = Path(__file__).resolve().parents[1]
MODELS = ("unified", "separate")
LAYERS = ("bare", "pyfunc", "HTTP")
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
            return {"entities": [{**e, "score": float(e["score"])} for e in out]}  # JSON-ready, as the unified outputs
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


class SeparateModels(mlflow.pyfunc.PythonModel):
    """The separate side as a pyfunc: the per-task pipelines (its artifacts, by task) and their router."""

    def __init__(self, tasks: dict[str, str], max_length: int) -> None:
        self.tasks, self.max_length = tasks, max_length

    def load_context(self, context: Any) -> None:
        folders = {name: Path(context.artifacts[name]) for name in self.tasks}
        self.serve, self.models = load_separate(folders, self.tasks, self.max_length)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # untyped: see UnitaskModel
        return self.serve(as_rows(model_input))


def load_bare(folder: str) -> tuple[Serve, list[torch.nn.Module]]:
    """The served model's Router over the multi-task predictor, called in-process (no pyfunc)."""
    predictor = load_predictor(folder)
    return Router({"multitask": predictor}).predict, [predictor.model]  # type: ignore[attr-defined]


def load_pyfunc(path: str) -> tuple[Serve, list[torch.nn.Module]]:
    model = mlflow.pyfunc.load_model(path)
    return lambda rows: list(model.predict(as_frame(rows))), []


def timed_requests(serve: Serve, requests: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """One warm-up request, then every request in turn: wall seconds, seconds per request, outputs,
    and the process's CPU seconds (every thread's)."""
    serve(requests[0])
    outputs: list[dict[str, Any]] = []
    latencies = []
    start, cpu = time.perf_counter(), time.process_time()
    for request in requests:
        sent = time.perf_counter()
        outputs += serve(request)
        latencies.append(time.perf_counter() - sent)
    return {"seconds": time.perf_counter() - start, "latencies": latencies, "outputs": outputs, "cpu": time.process_time() - cpu}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def http_side(path: str, traffic_file: Path, concurrency: int, log: Path) -> tuple[float, int, dict[str, Any]]:
    """`mlflow models serve` of the pyfunc at `path` on loopback, loaded by bench/load_client.py in a
    second process: (seconds until /ping answers, the server's resident memory, the client's results)."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server runs `uvicorn` from PATH: this environment's
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", path, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log, "ab") as out:
        start = time.perf_counter()
        # its own process group, to stop it with its uvicorn child; the bench's session, so that the kernel's
        # per-session CPU share (autogroup) treats the HTTP and the in-process sides alike
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, process_group=0)
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"mlflow models serve exited with {server.returncode}; its log:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                if time.perf_counter() - start > 300:
                    sys.exit(f"mlflow models serve did not answer /ping in 300 s; its log:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        started = time.perf_counter() - start
        result_file = traffic_file.with_suffix(".result.json")
        subprocess.run([sys.executable, str(REPO / "bench/load_client.py"), "--url", f"http://127.0.0.1:{port}",
                        "--traffic", str(traffic_file), "--concurrency", str(concurrency), "--out", str(result_file)],
                       check=True)  # fmt: skip
        rss = tree_rss(server.pid)
        return started, rss, json.loads(result_file.read_text())
    finally:
        stop_group(server)


def stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group, then wait until every process of it (its uvicorn
    child too) is gone, so that the next side is timed on an idle machine; SIGKILL after 30 s."""
    os.killpg(server.pid, signal.SIGTERM)
    deadline = time.perf_counter() + 30
    while True:
        server.poll()  # reaps the group leader once it exits
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        if time.perf_counter() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--multitask", default=str(REPO / "models/multitask"))
    parser.add_argument("--finetune", default=str(REPO / "models/finetune"))
    parser.add_argument("--rows-per-task", type=int, default=200)
    parser.add_argument("--request-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-single", type=int, default=100, help="rows sent with request size 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1, help="HTTP requests in flight at most")
    parser.add_argument("--no-http", action="store_true", help="only the in-process sides")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = load_config(args.params)
    manifest = read_manifest(Path(args.multitask))
    tasks = {name: spec["type"] for name, spec in manifest["tasks"].items()}
    folders = {name: Path(args.finetune) / name for name in tasks}
    max_length = int(manifest["max_length"])
    rows = mixed_rows(cfg, tasks, args.rows_per_task, args.seed)
    traffic = {
        size: [rows[i : i + size] for i in range(0, args.max_single if size == 1 else len(rows), size)] for size in args.request_sizes
    }
    layers = LAYERS[:2] if args.no_http else LAYERS
    sides = [(layer, model) for layer in layers for model in MODELS]
    process = psutil.Process()

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"unified": str(Path(tmp) / "unified"), "separate": str(Path(tmp) / "separate")}
        mlflow.pyfunc.save_model(path=paths["unified"], python_model=UnitaskModel(), artifacts={"multitask": args.multitask},
                                 signature=signature())  # fmt: skip
        mlflow.pyfunc.save_model(path=paths["separate"], python_model=SeparateModels(tasks, max_length),
                                 artifacts={name: str(f) for name, f in folders.items()}, signature=signature())  # fmt: skip
        traffic_file = Path(tmp) / "traffic.json"
        traffic_file.write_text(json.dumps({str(size): requests for size, requests in traffic.items()}))
        loaders: dict[tuple[str, str], Callable[[], tuple[Serve, list[torch.nn.Module]]]] = {
            ("bare", "unified"): lambda: load_bare(args.multitask),
            ("bare", "separate"): lambda: load_separate(folders, tasks, max_length),
            ("pyfunc", "unified"): lambda: load_pyfunc(paths["unified"]),
            ("pyfunc", "separate"): lambda: load_pyfunc(paths["separate"]),
        }
        loads: dict[tuple[str, str], list[float]] = {side: [] for side in sides}
        results: dict[tuple[str, str, int], list[dict[str, Any]]] = {(*side, n): [] for side in sides for n in traffic}
        weights: dict[str, int] = {}
        memory: dict[tuple[str, str], int] = {}
        keep = []  # the first load of each in-process side stays alive, so that the next side's RSS growth is its own
        for repeat in range(args.repeats):
            for side in sides:
                print(f"repeat {repeat + 1}/{args.repeats}: {side[0]} {side[1]}", file=sys.stderr, flush=True)
                gc.collect()
                if side[0] == "HTTP":
                    started, rss, http = http_side(paths[side[1]], traffic_file, args.concurrency, Path(tmp) / "serve.log")
                    loads[side].append(started)
                    memory.setdefault(side, rss)
                    for size in traffic:
                        results[(*side, size)].append(http[str(size)])
                    continue
                before = process.memory_info().rss
                start = time.perf_counter()
                serve, models = loaders[side]()
                loads[side].append(time.perf_counter() - start)
                for size, requests in traffic.items():
                    results[(*side, size)].append(timed_requests(serve, requests))
                if repeat == 0:
                    memory[side] = process.memory_info().rss - before
                    if models:
                        weights[side[1]] = weight_bytes(models)
                    keep.append(serve)
                del serve, models

    print_tables(args, rows, tasks, traffic, sides, loads, results, weights, memory)


def print_tables(args: Any, rows: list[dict[str, Any]], tasks: dict[str, str], traffic: dict[int, list[Any]],
                 sides: list[tuple[str, str]], loads: dict[Any, list[float]], results: dict[Any, list[dict[str, Any]]],
                 weights: dict[str, int], memory: dict[Any, int]) -> None:  # fmt: skip
    served = {size: sum(len(r) for r in requests) for size, requests in traffic.items()}
    rate = {key: statistics.median(served[key[2]] / r["seconds"] for r in runs) for key, runs in results.items()}
    p50 = {key: statistics.median(1000 * float(np.percentile(r["latencies"], 50)) for r in runs) for key, runs in results.items()}
    p95 = {key: statistics.median(1000 * float(np.percentile(r["latencies"], 95)) for r in runs) for key, runs in results.items()}
    load = os.getloadavg()
    print(f"\n{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; {len(rows)} mixed rows "
          f"({args.rows_per_task} per task, {len(tasks)} tasks); HTTP concurrency {args.concurrency}; median of {args.repeats}\n")  # fmt: skip
    print("| layer | model | request size | rows/s | p50 ms | p95 ms | CPU ms/row | load s | memory MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for side in sides:
        for size in traffic:
            key = (*side, size)
            cpu = f"{statistics.median(1000 * r['cpu'] / served[size] for r in results[key]):.1f}" if side[0] != "HTTP" else "–"
            print(f"| {side[0]} | {side[1]} | {size} | {rate[key]:.1f} | {p50[key]:.1f} | {p95[key]:.1f} | {cpu} | "
                  f"{statistics.median(loads[side]):.2f} | {memory[side] / 2**20:.0f} |")  # fmt: skip
    print("\nweights MB: " + ", ".join(f"{model} {b / 2**20:.0f}" for model, b in weights.items()))
    print("\nunified/separate rows/s (in-process layers: and by CPU time):")
    for layer in dict.fromkeys(layer for layer, _ in sides):
        ratios = []
        for n in traffic:
            ratio = f"request size {n}: {rate[layer, 'unified', n] / rate[layer, 'separate', n]:.2f}x"
            if layer != "HTTP":
                cpu = {m: statistics.median(r["cpu"] for r in results[layer, m, n]) for m in MODELS}
                ratio += f" ({cpu['separate'] / cpu['unified']:.2f}x)"
            ratios.append(ratio)
        print(f"- {layer}: " + ", ".join(ratios))
    print("\nover the bare predictor, p50 ms per request:")
    for layer in [layer for layer in dict.fromkeys(layer for layer, _ in sides) if layer != "bare"]:
        print(f"- {layer}: " + "; ".join(
            f"request size {n}: " + ", ".join(f"{m} {p50[layer, m, n] - p50['bare', m, n]:+.1f}" for m in MODELS) for n in traffic))
    biggest = max(traffic)
    answers = {side: results[(*side, biggest)][-1]["outputs"] for side in sides}
    errors = {f"{layer} {model}": sum("error" in o for o in outs) for (layer, model), outs in answers.items()}
    labels = {side: [o.get("label") for o, r in zip(outs, rows) if tasks[r["task"]] == "classification"] for side, outs in answers.items()}
    same_layers = all(labels[side] == labels[sides[0]] for side in sides if side[1] == "unified")
    agree = np.mean([u == s for u, s in zip(labels[sides[0]], labels[sides[1]])])
    print(f"\nerrors: {errors}; unified labels the same at every layer: {same_layers}; "
          f"same label of both models on {len(labels[sides[0]])} classification rows: {agree:.1%}")


if __name__ == "__main__":
    main()
