"""Low-data benchmark of text augmentation and regularization: fine-tune on a seeded fraction of a
task's train split, with and without `finetune.augment` (or other `finetune` settings, e.g. dropout
or head_l1, with --arm), over several seeds; report test metrics as mean ± std.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_augment.py \
        [--task trec_coarse] [--fraction 0.1] [--seeds 1 2 3] [--epochs 5] [--augment NAME=YAML ...] \
        [--arm NAME=YAML ...]

Each run is the real `finetune` stage on the default encoder (pretrain.output, else model.backbone)
in a scratch project (--workdir) that reads this repo's data/prepared, so the repo's stage outputs
are untouched. Both arms of a seed train on the same sampled rows (`finetune.max_train_rows`, seeded
by `seed`), for the same epochs, without early stopping; the best validation epoch is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from unitask.config import load_config
from unitask.training.finetune import finetune

REPO = Path(__file__).resolve().parents[1]
AUGMENT = {"rows": 0.5, "deletion": 0.1, "swap": 0.1, "insertion": 0.1, "cutoff": 0.1, "mask": 0.1}


def variant(text: str) -> tuple[str, dict]:
    """NAME=YAML -> (name, augment block)."""
    name, _, block = text.partition("=")
    return name, yaml.safe_load(block)


def scratch_params(workdir: Path, args: argparse.Namespace) -> Path:
    """--params (the repo's params.yaml) reading this repo's prepared data and encoder, writing under workdir."""
    params = yaml.safe_load(args.params.read_text())
    params["paths"] = {**params.get("paths", {}), "prepared": str(REPO / params["paths"]["prepared"]),
                       "reports": "reports", "roots": [str(REPO)]}  # fmt: skip
    params["pretrain"]["output"] = str(REPO / params["pretrain"]["output"])
    params["tracking"] = {**params["tracking"], "uri": "sqlite:///mlflow/mlflow.db", "artifact_location": "mlflow/artifacts"}
    params["model"]["max_length"] = args.max_length
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="trec_coarse")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the config to start from")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the train split to train on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--augment", type=variant, action="append", metavar="NAME=YAML",
                        help=f"an augmented arm (repeatable); default: all={json.dumps(AUGMENT)}")
    parser.add_argument("--arm", type=variant, action="append", metavar="NAME=YAML",
                        help="an arm of other finetune settings (repeatable), e.g. 'dropout_0.3={dropout: 0.3}'")
    parser.add_argument("--without", action=argparse.BooleanOptionalAction, default=True,
                        help="also train the arm without augmentation (default: yes)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "unitask-bench-augment")
    parser.add_argument("--out", type=Path, help="write every run's summary here (JSON)")
    args = parser.parse_args()

    params = scratch_params(args.workdir, args)
    train_rows = len(pd.read_parquet(REPO / "data/prepared" / args.task / "train.parquet"))
    rows = round(args.fraction * train_rows)
    augmented = args.augment or ([] if args.arm else [("all", AUGMENT)])
    arms = {
        **({"without": {}} if args.without else {}),
        **{name: {"augment": block} for name, block in augmented},
        **dict(args.arm or []),
    }
    runs = []
    for seed in args.seeds:
        for arm, settings in arms.items():
            overrides = [
                f"seed={seed}", f"tasks.{args.task}.finetune={{}}", f"finetune.epochs={args.epochs}",
                f"finetune.max_train_rows={rows}", "finetune.early_stopping_patience=null", "finetune.augment={}",
                *(f"finetune.{key}={json.dumps(value)}" for key, value in settings.items()),
            ]  # fmt: skip
            started = time.perf_counter()
            summary = finetune(load_config(params, overrides), args.task)
            runs.append({"seed": seed, "augment": arm, "seconds": round(time.perf_counter() - started, 1), **summary})
            test = summary["test"]
            print(f"seed {seed}\t{arm}\ttest macro_f1 {test['macro_f1']:.4f}\taccuracy {test['accuracy']:.4f}"
                  f"\t{runs[-1]['seconds']} s", flush=True)  # fmt: skip

    print(f"\n{args.task}: {rows} of {train_rows} train rows, {args.epochs:g} epochs, seeds {args.seeds}")
    print("| arm | test macro-F1 | test accuracy | validation macro-F1 | s/run |\n|---|---|---|---|---|")
    for arm in arms:
        mine = [r for r in runs if r["augment"] == arm]
        cells = []
        for split, key in (("test", "macro_f1"), ("test", "accuracy"), ("validation", "macro_f1")):
            values = [r[split][key] for r in mine]
            cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}")
        print(f"| {arm} | " + " | ".join(cells) + f" | {statistics.mean(r['seconds'] for r in mine):.0f} |")
    if args.without:
        base = {r["seed"]: r["test"]["macro_f1"] for r in runs if r["augment"] == "without"}
        for arm in [a for a in arms if a != "without"]:
            diffs = [round(r["test"]["macro_f1"] - base[r["seed"]], 4) for r in runs if r["augment"] == arm]
            print(f"{arm} - without, test macro-F1 per seed: {diffs}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
