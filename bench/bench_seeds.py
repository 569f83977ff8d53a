"""A comparison over several training seeds: mean ± std per arm and of the paired difference, on the
validation split (what a choice may rest on) and on the test split (reported).

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_seeds.py \
        [--params params.yaml] [--seeds 1 2 3] [--tasks T ...] [--set KEY=VALUE ...] \
        [--arm NAME=STAGE[,KEY=VALUE...] ...] [--workdir DIR] [--out FILE]

Default arms: `finetune` (one fine-tune per task) against `multitask` (one model for all the tasks),
the README's "multi-task against five fine-tunes". An arm is the real `finetune`, `multitask` or
`fusion` stage (its fused model) with its own overrides, e.g. `--arm 'T2=multitask,multitask.sampler=temperature'`,
or `--tasks easy_vqa --arm 'gated=fusion' --arm 'concat=fusion,fusion.method=concat'`. `--set` applies to
every run, e.g. a capped budget: `--set prepare.max_rows=600 --set finetune.max_steps=40`.

Runs happen in a scratch project (--workdir): `data fetch`, `prepare` and (when pretrain.enabled)
`pretrain` once, with the config's own seed, so every run sees the same splits and encoder; then per
seed every arm, so the arms of a seed are paired.
Only the training seed changes between seeds. A score is the task's main metric on the 0-1 scale
(SQuAD's percent / 100); an arm's score is the mean over `--tasks`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from unitask.config import Config, load_config
from unitask.evaluation.metrics import unit_score

REPO = Path(__file__).resolve().parents[1]
STAGES = ("finetune", "multitask", "fusion")
SPLITS = ("validation", "test")


def arm(text: str) -> tuple[str, str, list[str]]:
    """NAME=STAGE[,KEY=VALUE...] -> (name, stage, overrides)."""
    name, _, spec = text.partition("=")
    stage, *overrides = spec.split(",")
    if stage not in STAGES or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=STAGE[,KEY=VALUE...] with STAGE one of {', '.join(STAGES)}")
    return name, stage, overrides


def scratch_params(workdir: Path, params: Path, tasks: list[str] | None) -> tuple[Path, list[str]]:
    """`params` with every output (data, models, reports, MLflow) under `workdir` and only `tasks`
    (default: the multi-task stage's) in `tasks` and in every section's task lists and task-keyed maps."""
    raw = yaml.safe_load(params.read_text(encoding="utf-8"))
    tasks = tasks or load_config(params).multitask_tasks()
    raw["tasks"] = {name: raw["tasks"][name] for name in tasks}
    for section in raw.values():
        if isinstance(section, dict) and isinstance(section.get("tasks"), list):
            section["tasks"] = [t for t in section["tasks"] if t in tasks]
        for key in ("augment_per_task", "rates", "prompts"):  # fusion's, llm's
            if isinstance(section, dict) and isinstance(section.get(key), dict):
                section[key] = {t: v for t, v in section[key].items() if t in tasks}
    raw["tracking"] = {**raw.get("tracking", {}), "uri": "sqlite:///mlflow/mlflow.db", "artifact_location": "mlflow/artifacts"}
    raw.setdefault("paths", {})["roots"] = [str(REPO)]  # local task sources relative to the repo may be read
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path, tasks


def scores(cfg: Config, stage: str, tasks: list[str]) -> dict[str, dict[str, float]]:
    """Train `stage` on `tasks`; {split: {task: main metric (0-1)}} from its summaries."""
    from unitask.training.finetune import finetune
    from unitask.training.multitask import multitask

    out: dict[str, dict[str, float]] = {split: {} for split in SPLITS}
    if stage == "fusion":  # the fused model of each text+image task (the unimodal ones with fusion.baselines)
        from unitask.training.fusion import fusion

        for task in tasks:
            summary = fusion(cfg, task)
            for split in SPLITS:
                out[split][task] = summary["models"]["fusion"][split][summary["main_metric"]]
        return out
    if stage == "multitask":
        summary = multitask(cfg)
        for task in tasks:
            kind, metric = summary["types"][task], summary["main_metrics"][task]
            for split in SPLITS:
                out[split][task] = unit_score(kind, metric, summary[split][task][metric])
        return out
    for task in tasks:
        summary = finetune(cfg, task)
        for split in SPLITS:
            out[split][task] = unit_score(summary["type"], summary["main_metric"], summary[split][summary["main_metric"]])
    return out


def spread(values: list[float]) -> str:
    """Mean ± sample std in points (x 100)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def report(runs: list[dict[str, Any]], arms: list[str], seeds: list[int]) -> str:
    """Markdown: per arm the mean score per split; per arm after the first, the paired difference."""
    mean = {(r["seed"], r["arm"], s): statistics.mean(r["scores"][s].values()) for r in runs for s in SPLITS}
    lines = ["| arm | validation mean (pts) | test mean (pts) | per seed, validation | s/run |", "|---|---|---|---|---|"]
    for name in arms:
        per_seed = [mean[seed, name, "validation"] for seed in seeds]
        seconds = statistics.mean(r["seconds"] for r in runs if r["arm"] == name)
        lines.append(f"| {name} | {spread(per_seed)} | {spread([mean[s, name, 'test'] for s in seeds])} | "
                     + ", ".join(f"{100 * v:.1f}" for v in per_seed) + f" | {seconds:.0f} |")  # fmt: skip
    base = arms[0]
    for name in arms[1:]:
        lines.append("")
        for split in SPLITS:
            diffs = [mean[s, name, split] - mean[s, base, split] for s in seeds]
            ahead = sum(d > 0 for d in diffs)
            size = f"ahead on {ahead} of {len(seeds)} seeds"
            if abs(statistics.mean(diffs)) < 0.02:
                size = "under 2 points: no ranking"
            lines.append(f"- {name} − {base}, {split}: {spread(diffs)} pts; per seed "
                         + ", ".join(f"{100 * d:+.1f}" for d in diffs) + f" ({size})")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))  # fmt: skip
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the config to start from")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (at least 3 for a claim)")
    parser.add_argument("--tasks", nargs="+", help="tasks to compare; default: multitask.tasks")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="for every run")
    parser.add_argument("--arm", type=arm, action="append", metavar="NAME=STAGE[,KEY=VALUE...]",
                        help="an arm (repeatable; the first is the baseline); default: finetune and multitask")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "unitask-bench-seeds")
    parser.add_argument("--out", type=Path, help="write every run's scores here (JSON)")
    args = parser.parse_args()

    from unitask.data.fetch import fetch
    from unitask.data.prepare import prepare

    params, tasks = scratch_params(args.workdir, args.params, args.tasks)
    base = load_config(params, args.overrides)
    arms = args.arm or [("finetune", "finetune", []), ("multitask", "multitask", [])]
    fetch(base, tasks)
    prepare(base, tasks)
    if base.pretrain.enabled:  # one encoder for every run, as in the default chain
        from unitask.training.pretrain import pretrain

        pretrain(base)
    runs = []
    for seed in args.seeds:
        for name, stage, overrides in arms:
            cfg = load_config(params, [*args.overrides, *overrides, f"seed={seed}"])
            started = time.perf_counter()
            got = scores(cfg, stage, tasks)
            runs.append({"seed": seed, "arm": name, "stage": stage, "overrides": overrides,
                         "seconds": round(time.perf_counter() - started, 1), "scores": got})  # fmt: skip
            means = {s: statistics.mean(got[s].values()) for s in SPLITS}
            print(f"seed {seed}\t{name}\tvalidation {means['validation']:.4f}\ttest {means['test']:.4f}"
                  f"\t{runs[-1]['seconds']} s", flush=True)  # fmt: skip
    print(f"\ntasks {', '.join(tasks)}; seeds {args.seeds}; --set {' '.join(args.overrides) or '(none)'}\n")
    print(report(runs, [name for name, _, _ in arms], args.seeds))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
