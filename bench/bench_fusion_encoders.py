"""Image encoders for `unitask fusion`, side by side on VALIDATION with the same budget: each
candidate trains the fused model (fusion.method, no baselines) for --steps optimizer steps and is
scored on the validation split, overall and per group (easy_vqa: colour, shape, yes/no).

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_fusion_encoders.py \
        [--task easy_vqa] [--steps 300] [--threads N] [--candidate NAME[=YAML] ...] [--set KEY=VALUE ...]

A candidate is a YAML mapping of `fusion` keys (image_config, image_encoder, learning_rate, ...).
Each run is the real `fusion` stage on this repo's prepared data, writing its reports, models and
MLflow runs to a scratch folder, so the repo's stage outputs are untouched. The test split is not
looked at for choosing (it is scored by the stage and left in the scratch folder only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import yaml

from unitask.config import load_config
from unitask.training.fusion import fusion

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "vit": {"image_config": {"model_type": "vit", "image_size": 64, "patch_size": 8, "hidden_size": 64,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}},
    "resnet32": {"image_config": {"model_type": "resnet", "embedding_size": 32, "hidden_sizes": [32, 64, 128],
                                  "depths": [1, 1, 1], "layer_type": "basic"}},
    "resnet16": {"image_config": {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 64],
                                  "depths": [1, 1, 1], "layer_type": "basic"}},
}  # fmt: skip


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(name: str, settings: dict, args: argparse.Namespace, scratch: Path) -> dict:
    overrides = [
        f"paths.roots=[{scratch}]", f"paths.reports={scratch}/reports", f"fusion.output={scratch}/models", f"fusion.checkpoints={scratch}/checkpoints",
        f"tracking.uri=sqlite:///{scratch}/mlflow.db", f"tracking.artifact_location={scratch}/artifacts",
        "fusion.baselines=false", f"fusion.max_steps={args.steps}", f"fusion.tasks=[{args.task}]", *args.set,
        *(f"fusion.{key}={json.dumps(value)}" for key, value in settings.items()),
    ]  # fmt: skip
    cfg = load_config(str(args.params), overrides)
    load, cpu, started = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    summary = fusion(cfg, args.task)["models"]["fusion"]
    validation = summary["validation"]
    return {
        "candidate": name,
        "settings": settings,
        "steps": summary["train"]["steps"],
        "train_seconds": summary["train"]["seconds"],
        "stage_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(cpu_seconds() - cpu, 1),
        "load_before": round(load, 2),
        "parameters": summary["parameters"],
        "validation_accuracy": validation["accuracy"],
        "validation_by_group": {g: v["accuracy"] for g, v in validation.get("by_group", {}).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="easy_vqa")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per candidate (the same budget)")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=YAML",
                        help="a candidate's fusion settings (default: the built-in ones)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    chosen = dict(CANDIDATES)
    if args.candidate:
        chosen = {}
        for text in args.candidate:
            name, _, block = text.partition("=")
            chosen[name] = yaml.safe_load(block) if block else CANDIDATES[name]
    rows = []
    for name, settings in chosen.items():
        with tempfile.TemporaryDirectory(prefix=f"bench-fusion-{name}-") as scratch:
            rows.append(run(name, settings, args, Path(scratch)))
        print(json.dumps(rows[-1]), flush=True)
    groups = sorted({g for r in rows for g in r["validation_by_group"]})
    print(f"\n| candidate | steps | validation acc | {' | '.join(groups)} | train s | CPU s | params | load |")
    print("|---|---:|---:|" + "---:|" * len(groups) + "---:|---:|---:|---:|")
    for r in rows:
        cells = " | ".join(f"{r['validation_by_group'].get(g, float('nan')):.3f}" for g in groups)
        print(f"| {r['candidate']} | {r['steps']} | {r['validation_accuracy']:.3f} | {cells} | {r['train_seconds']} | "
              f"{r['cpu_seconds']} | {r['parameters']:,} | {r['load_before']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
