"""What each `unitask` command does and prints: the body of every subcommand (the stages' in
`STAGE_BODIES`, and the others'). Each calls the function that does the work and prints the lines a
person reads; the parser is in `unitask.cli`, the stage declarations in `unitask.stages`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from unitask.config import Config
from unitask.errors import UnitaskError


# ---- the stages ------------------------------------------------------------------------------


def _tasks(args: argparse.Namespace, default: Callable[[], list[str]]) -> list[str]:
    return list(args.tasks) if getattr(args, "tasks", None) else default()


def prepare_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.data.prepare import dropped_line, prepare

    for name, summary in prepare(cfg, args.tasks).items():
        print(f"{name}\t" + json.dumps(summary["rows"]))
        print(f"{name}\t{dropped_line(summary)}")


def validate_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.validation import validate

    for name, summary in validate(cfg, args.tasks).items():
        counts = summary["expectations"]
        warned = f", {counts['failed_warn']} warned" if counts["failed_warn"] else ""
        print(f"{name}\t{summary['status']}\t{summary['rows_checked']} rows, {counts['evaluated']} expectations{warned}")


def pretrain_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.training.pretrain import pretrain
    from unitask.training.trainer import is_main_process

    result = pretrain(cfg, resume=args.resume)
    if cfg.pretrain.enabled and is_main_process():
        held = result["heldout"]
        print(f"held-out perplexity\t{held['perplexity_before']:.2f} -> {held['perplexity_after']:.2f}")
        print(f"encoder\t{cfg.path(cfg.pretrain.output)}")


def baseline_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.baselines import baseline, baseline_tasks

    for name in _tasks(args, lambda: baseline_tasks(cfg)):
        _print_scores(name, baseline(cfg, name))


def finetune_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.training.finetune import finetune
    from unitask.training.trainer import is_main_process
    from unitask.tuning import metric_line

    summary = finetune(cfg, args.task, resume=args.resume)
    if is_main_process():
        _print_scores(args.task, summary)
        metric = summary["main_metric"]
        print(metric_line(metric, summary["validation"][metric]))  # for Katib's metrics collector


def multitask_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.training.multitask import multitask
    from unitask.training.trainer import is_main_process

    summary = multitask(cfg, resume=args.resume)
    if is_main_process():
        for name, metric in summary["main_metrics"].items():
            print(f"{name}\tvalidation {metric} {summary['validation'][name][metric]:.4f}"
                  f"\ttest {metric} {summary['test'][name][metric]:.4f}")
        print(f"mean\tvalidation {summary['validation']['mean_score']:.4f}\ttest {summary['test']['mean_score']:.4f}")
        print(f"model\t{cfg.path(cfg.multitask.output)}")


def multitask_comparison_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.evaluation.multitask_comparison import compare_multitask

    result = compare_multitask(cfg)
    for name, row in result["tasks"].items():
        single = "–" if row["single_task"] is None else f"{row['single_task']:.4f}"
        print(f"{name}\t{row['metric']}\tsingle-task {single}\tmulti-task {row['multitask']:.4f}")
    mean, compute = result["mean"], result["compute"]
    print(f"mean\tsingle-task {mean['single_task']:.4f}\tmulti-task {mean['multitask']:.4f}")
    print(f"seconds\tsingle-task {compute['single_task']['seconds']:.0f}\tmulti-task {compute['multitask']['seconds']:.0f}")
    print(f"comparison\t{cfg.path(cfg.multitask.comparison)}")


def llm_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.llm.train import llm
    from unitask.training.trainer import is_main_process

    summary = llm(cfg, resume=args.resume)
    if is_main_process():
        for name, metric in summary["main_metrics"].items():
            zero = summary["zeroshot"]["test"][name][metric] if summary["zeroshot"] else float("nan")
            print(f"{name}\ttest {metric}\tllm {summary['test'][name][metric]:.4f}\tllm_zeroshot {zero:.4f}"
                  f"\tunparsed {summary['test'][name]['unparsed']}")
        print(f"model\t{cfg.path(cfg.llm.output)}")


def fusion_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.training.fusion import fusion

    from unitask.training.trainer import is_main_process

    names = _tasks(args, cfg.fusion_tasks)
    if not names:
        print("fusion\tno text+image task to train (fusion.tasks, or no multimodal_classification task declared)")
    for name in names:
        summary = fusion(cfg, name, resume=args.resume)
        if not is_main_process():
            continue
        metric = summary["main_metric"]
        cells = "\t".join(f"{m} {r['test'][metric]:.4f}" for m, r in summary["models"].items())
        print(f"{name}\ttest {metric}\t{cells}")


def evaluate_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.evaluation.stage import evaluate

    result = evaluate(cfg)
    for task, entry in result["tasks"].items():
        main = entry["main_metric"]
        cells = "\t".join(f"{m} {v[main]:.4f}" for m, v in result["table"][task].items())
        print(f"{task}\t{main}\t{cells}")


def register_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.registry import register

    decision = register(cfg)
    print(f"{decision['name']}\tversion {decision['version']}\t{decision['decision']}: {decision['reason']}")


def _print_scores(name: str, summary: dict[str, Any]) -> None:
    metric = summary["main_metric"]
    print(f"{name}\tvalidation {metric} {summary['validation'][metric]:.4f}\ttest {metric} {summary['test'][metric]:.4f}")


# ---- the other commands ----------------------------------------------------------------------


def fetch_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.data.fetch import fetch

    for name, digest in fetch(cfg, args.tasks, force=args.force).items():
        print(f"{name}\tsha256:{digest}")


def task_add_command(cfg: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    import yaml

    from unitask.config import load_config
    from unitask.data.fetch import fetch
    from unitask.data.prepare import dropped_line, prepare
    from unitask.data.task_add import Choices, add_task
    from unitask.validation import validate

    params = Path(args.params)
    choices = Choices(args.name, args.text, args.text_pair, args.label)
    name, entry = add_task(cfg, params, Path(args.file), choices)
    print(f"wrote tasks.{name} to {params}:\n" + yaml.safe_dump({name: entry}, sort_keys=False).rstrip())
    cfg = load_config(params, args.overrides)
    fetch(cfg, [name])
    summary = prepare(cfg, [name])[name]
    print(f"prepare\t{json.dumps(summary['rows'])}\t{dropped_line(summary)}")
    print(f"validate\t{validate(cfg, [name])[name]['status']}")
    print(f"next\tunitask finetune --task {name}   (or `unitask dvc` and `dvc repro` for every stage)")


def tune_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.tuning.search import tune

    summary = tune(cfg, args.stage, args.task, report=lambda line: print(line, flush=True))
    best = " ".join(f"{k}={v}" for k, v in summary["best_params"].items())
    print(f"best\t{summary['metric']} {summary['best_value']:.4f}\t{best}\t({summary['complete']} complete, "
          f"{summary['pruned']} pruned, {summary['seconds']:.0f} s)")
    print(f"params\t{summary['params_file']}\nkatib\t{summary['katib_file']}")


def predict_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.inference.command import predict_command

    predict_command(cfg, args)


def dvc_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask import dvcfile

    if args.check:
        dvcfile.check(cfg)
        print(f"up to date\t{dvcfile.dvc_file(cfg)}")
    else:
        print(f"wrote\t{dvcfile.write(cfg)}")


def docs_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask import docsite

    if args.check:
        docsite.check(cfg.root)
        print(f"up to date\t{cfg.root / 'docs'}")
    else:
        for path in docsite.write(cfg.root):
            print(f"wrote\t{path}")


def summary_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.summary import link, summary

    print(link(cfg) if args.link else summary(cfg))


def repro_command(cfg: Config, args: argparse.Namespace) -> None:
    import subprocess

    from unitask.tracking import pipeline

    with pipeline(cfg, "dvc"):
        # the dvc of this environment (python -m dvc), whatever PATH holds
        done = subprocess.run([sys.executable, "-m", "dvc", "repro", *[a for a in args.dvc_args if a != "--"]], cwd=cfg.root)
        if done.returncode:
            raise UnitaskError(f"dvc repro exited with {done.returncode}", hint="see dvc's message above")


def pipeline_compile_command(cfg: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from unitask.kubeflow.project import compile_pipeline

    print(f"compiled\t{compile_pipeline(cfg, Path(args.output).resolve() if args.output else None)}")


def pipeline_run_local_command(cfg: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from unitask.kubeflow.project import run_local

    run = run_local(cfg, Path(args.output).resolve() if args.output else None, cache=args.cache, stages=args.stages)
    print(f"outputs\t{run}")


def pipeline_submit_command(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.kubeflow.project import submit

    run_id = submit(cfg, args.host, args.experiment, args.run_name, args.namespace, args.enable_caching)
    print(f"run\t{run_id}")


# what `unitask <stage>` runs and prints, by stage; a stage not listed runs `Stage.execute`
STAGE_BODIES: dict[str, Callable[[Config, argparse.Namespace], None]] = {
    "prepare": prepare_command, "validate": validate_command, "pretrain": pretrain_command,
    "baseline": baseline_command, "finetune": finetune_command, "multitask": multitask_command,
    "multitask_comparison": multitask_comparison_command, "llm": llm_command, "fusion": fusion_command,
    "evaluate": evaluate_command, "register": register_command,
}  # fmt: skip
