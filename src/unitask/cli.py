"""`unitask`: one subcommand per stage. Each parses its arguments, loads the config and calls the
stage function; errors the user can fix print as one short message and a non-zero exit code."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence

from unitask.config import Config, load_config
from unitask.errors import UnitaskError

EPILOG = "Run `unitask COMMAND --help` for a command's options. Docs: README.md."


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", metavar="FILE", help="the config (default: %(default)s)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set prepare.max_rows=200 (repeatable)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return common


def _tasks_option(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--task", dest="tasks", action="append", metavar="NAME", help=f"{verb} only this task (repeatable; default: all)"
    )


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="unitask",
        description="Train one language model for many NLP tasks: fetch and prepare data, "
        "validate it, pretrain, fine-tune, multi-task and fusion training, evaluate, register.",
        epilog=EPILOG,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="data sources", description="Work with the declared data sources.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    fetch = data_commands.add_parser(
        "fetch",
        parents=[common],
        help="materialize data/raw from the sources in params.yaml",
        description="Copy each task's declared source (local path, installed package, Hugging Face hub, "
        "s3://) into data/raw/<task>/, checking its sha256 when the config declares one.",
    )
    _tasks_option(fetch, "fetch")
    fetch.add_argument("--force", action="store_true", help="fetch again even when data/raw is up to date")
    fetch.set_defaults(run=_fetch)

    prep = commands.add_parser(
        "prepare",
        parents=[common],
        help="make deterministic train/validation/test splits",
        description="Read data/raw/<task>, map columns to roles, drop empty and duplicate examples, and "
        "write seeded, stratified, disjoint splits to data/prepared/<task>/*.parquet with a summary "
        "in reports/prepare/<task>.json.",
    )
    _tasks_option(prep, "prepare")
    prep.set_defaults(run=_prepare)

    check = commands.add_parser(
        "validate",
        parents=[common],
        help="check the prepared splits with great-expectations: the gate before training",
        description="Build a great-expectations suite from each task's declaration (roles, labels, "
        "label_range) and run it on data/prepared/<task>/{train,validation,test}: columns, empty text, "
        "label sets and ranges, tags vs tokens and BIO order, answer spans, images (exist, decode, mode, "
        "size), duplicates, train/validation/test leakage, class balance, and the share of rows longer "
        "than model.max_length. Writes reports/validate/<task>.json, Data Docs HTML in "
        "reports/data_docs/<task>/, and an MLflow run. Exits non-zero when a check of severity `error` "
        "fails, naming task, split, column, check and up to 5 rows by id; validate.severity sets "
        "checks to `warn`.",
    )
    _tasks_option(check, "validate")
    check.set_defaults(run=_validate)

    pre = commands.add_parser(
        "pretrain",
        parents=[common],
        help="continued pretraining of the encoder on unlabeled text (masked-LM or causal-LM)",
        description="Train model.backbone further on unlabeled text: by default the train split of every "
        "declared task (never validation or test text), or pretrain.corpus. Masked-LM for encoders, "
        "causal-LM for decoders (pretrain.objective). Reports held-out perplexity before and after in "
        "reports/pretrain.json and MLflow, and saves the encoder (safetensors) with its tokenizer to "
        "pretrain.output, where fine-tuning starts when pretrain.enabled is true.",
    )
    pre.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in pretrain.checkpoints"
    )
    pre.set_defaults(run=_pretrain)

    tune = commands.add_parser(
        "finetune",
        parents=[common],
        help="train a task head on the (pre)trained encoder",
        description="Train one text task's head on the encoder (pretrain.output when pretrain.enabled, "
        "else model.backbone) with transformers' Trainer: dynamic padding, length-grouped batches, bf16 "
        "where supported, early stopping on the validation metric. Writes finetune.output/<task> "
        "(safetensors, tokenizer, labels.json), reports/finetune/<task>.json and an MLflow run. "
        "Runs under `torchrun --nproc_per_node=N -m unitask.cli finetune ...` as DDP.",
    )
    tune.add_argument("--task", required=True, metavar="NAME", help="the task to fine-tune")
    tune.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in finetune.checkpoints/<task>"
    )
    tune.set_defaults(run=_finetune)

    search = commands.add_parser(
        "tune",
        parents=[common],
        help="hyperparameter search for a task's fine-tuning (Optuna; also writes a Katib Experiment)",
        description="Search tune.space (learning rate, batch size, epochs, warmup, weight decay, ...) for one "
        "task with Optuna's TPE sampler and median pruning on the validation metric; each trial trains with "
        "tune.budget (e.g. a cap on train rows) in a temporary folder and is a child MLflow run of one `tune` "
        "run. Prints one line per trial; writes the best values to <tune.output>/<task>.yaml "
        "(finetune.per_task.<task>, to merge into params.yaml) and the same search as a Katib v1beta1 "
        "Experiment to <tune.output>/<task>-katib.yaml. The fine-tune stage's outputs are not touched.",
    )
    search.add_argument("--stage", default="finetune", choices=["finetune"], help="the stage to tune (default: %(default)s)")
    search.add_argument("--task", required=True, metavar="NAME", help="the task to tune")
    search.set_defaults(run=_tune)

    multi = commands.add_parser(
        "multitask",
        parents=[common],
        help="train one shared encoder with a head per text task (multi-task learning)",
        description="Train one encoder with a head per text task (multitask.tasks; default: every declared "
        "text task) jointly: each batch holds one task's examples, drawn by multitask.sampler "
        "(proportional, temperature with size_cap, uniform, round_robin); the task losses are weighted by "
        "multitask.weighting (equal, static, uncertainty, dwa). Every task is scored on validation at each "
        "evaluation and the checkpoint with the best mean of the task metrics is kept. Writes "
        "multitask.output (one model for every task: `unitask predict` answers from it), "
        "reports/multitask.json, test predictions in reports/predictions/multitask/ and an MLflow run. "
        "--compare trains nothing: it compares the model with the single-task fine-tunes (metrics, training "
        "time, examples seen) in multitask.comparison (JSON and a Markdown table) and the MLflow run.",
    )
    multi.add_argument("--resume", action="store_true", help="continue from the last checkpoint in multitask.checkpoints")
    multi.add_argument(
        "--compare", action="store_true", help="only write the comparison with the single-task fine-tunes (trains nothing)"
    )
    multi.set_defaults(run=_multitask)

    lm = commands.add_parser(
        "llm",
        parents=[common],
        help="train one decoder LLM with LoRA on every text task at once (text to text)",
        description="Turn each row of the text tasks (llm.tasks; default: every declared text task) into an "
        "instruction prompt and a target text (label word, number, `type: words; ...` entities, answer span), "
        "score the base model llm.model (hub id, folder, or package:...; a GGUF file is converted once) with "
        "llm.shots in-context examples, train LoRA (PEFT) adapters on all tasks at once (llm.adapters: shared or "
        "per_task), and score it again. Writes test predictions to reports/predictions/{llm,llm_zeroshot}/, "
        "llm.metrics, llm.output (adapters, tokenizer, unitask-model.json: `unitask predict --model` answers "
        "from it) and an MLflow run.",
    )
    lm.add_argument("--resume", action="store_true", help="continue from the last checkpoint in llm.checkpoints")
    lm.set_defaults(run=_llm)

    ask = commands.add_parser(
        "predict",
        parents=[common],
        help="answer one input (or a JSON-lines file of them) with a saved model",
        description="Load the saved models (default: multitask.output, one model for every text task, and "
        "fusion.output for text+image tasks; each row goes to the model that answers its task) and print "
        "the output for the task as JSON: {label, scores}, "
        "{value}, {tags, entities} or {answer, start, end, score}. Pair classification takes --text-pair; "
        "extractive QA takes the question as --text and the context as --text-pair; token classification "
        "splits --text on white space. --input reads rows {task, text, text_pair, image} (one JSON object "
        "a line; - for standard input) and prints one JSON line per row.",
    )
    ask.add_argument("--task", metavar="NAME", help="the task to answer")
    ask.add_argument("--text", help="the input text (extractive QA: the question)")
    ask.add_argument("--text-pair", metavar="TEXT", help="the second text (pair classification; QA: the context)")
    ask.add_argument("--image", metavar="FILE", help="the image of a text+image task")
    ask.add_argument("--input", metavar="FILE", help="JSON lines of rows to answer instead (- reads standard input)")
    ask.add_argument("--model", metavar="DIR", help="one saved model folder instead of the defaults above")
    ask.set_defaults(run=_predict)

    fuse = commands.add_parser(
        "fusion",
        parents=[common],
        help="train text+image models (and text-only / image-only baselines) for multimodal tasks",
        description="For each multimodal task (default: fusion.tasks) train a late-fusion model: the text "
        "encoder (as fine-tuning uses), an image encoder (fusion.image_encoder from the hub or a folder, "
        "else a small ViT from fusion.image_config trained from scratch), a fusion module (fusion.method: "
        "concat, gated, weighted, cross_attention) and a classifier head, with optional auxiliary unimodal "
        "losses (fusion.loss_weights) and training-only image augmentation (fusion.augment). With "
        "fusion.baselines, a text-only and an image-only model get the same budget. Writes "
        "fusion.output/<task> (safetensors, tokenizer, image processor, unitask-model.json; `unitask "
        "predict` loads it), reports/fusion/<task>.json (all models side by side), test predictions in "
        "reports/predictions/{fusion,fusion_text,fusion_image}/<task>.jsonl, and one MLflow run per model.",
    )
    _tasks_option(fuse, "train")
    fuse.set_defaults(run=_fusion)

    base = commands.add_parser(
        "baseline",
        parents=[common],
        help="TF-IDF + linear model baselines for text classification and regression",
        description="Fit TF-IDF (word 1-2 grams) + logistic regression or ridge on each task's train split, "
        "pick the strength on validation, and write validation and test metrics to "
        "reports/baseline/<task>.json and MLflow.",
    )
    _tasks_option(base, "score")
    base.set_defaults(run=_baseline)

    score = commands.add_parser(
        "evaluate",
        parents=[common],
        help="score and compare every model on the test splits: tables, plots, an MLflow run",
        description="Score reports/predictions/<model>/<task>.jsonl of each model in evaluate.models (TF-IDF "
        "baseline, fine-tunes, multi-task, fusion and its text-only/image-only baselines) with the metrics "
        "of each task type, without loading any model. Writes evaluate.output (default reports/evaluate): "
        "comparison.json (a DVC metric), comparison.md, report.json (per-class reports, confusion matrices) "
        "and plots/ for `dvc plots show` (confusion matrices, metric by model, training curves from the "
        "training stages' MLflow runs); the MLflow run `evaluate` holds them with PNG figures.",
    )
    score.set_defaults(run=_evaluate)

    reg = commands.add_parser(
        "register",
        parents=[common],
        help="register the served model (multi-task + fusion) in MLflow; gate the champion alias",
        description="Log one MLflow pyfunc that answers every task (multitask.output, plus fusion.output when "
        "register.include_fusion) with a signature, an input example and a model card, and register it as "
        "register.name. The new version gets the alias `challenger`; `champion` moves to it only when it "
        "beats the current champion on register.gate.primary and no task's main metric drops by more "
        "than register.gate.max_task_regression. The decision and its numbers go to register.output and "
        "the MLflow run `register`. Rerunning with unchanged models and metrics registers nothing new.",
    )
    reg.set_defaults(run=_register)

    kfp_group = commands.add_parser(
        "pipeline",
        help="Kubeflow Pipelines: compile, run locally, submit",
        description="The same chain as Kubeflow components (components/, pipelines/): prepare -> validate -> "
        "pretrain -> baseline, finetune (a ParallelFor over the tasks), multitask, fusion -> evaluate -> "
        "register (only when evaluate's gate passes). Pipeline parameters mirror params.yaml; the "
        "`kubeflow` section sets the image, resources, GPUs, retries, caching and secret names.",
    )
    kfp_commands = kfp_group.add_subparsers(dest="pipeline_command", required=True, metavar="COMMAND")
    kfp_compile = kfp_commands.add_parser(
        "compile",
        parents=[common],
        help="write the compiled pipeline YAML (kubeflow.package)",
        description="Compile the pipeline for this config into kubeflow.package (default pipelines/unitask.yaml). "
        "Secrets are referenced by name only.",
    )
    kfp_compile.add_argument("--output", metavar="FILE", help="write here instead of kubeflow.package")
    kfp_compile.set_defaults(run=_pipeline_compile)
    kfp_local = kfp_commands.add_parser(
        "run-local",
        parents=[common],
        help="run the whole pipeline here with kfp's local runner (no cluster, no Docker)",
        description="Run the same pipeline with kfp.local's SubprocessRunner in this Python environment. "
        "Artifacts land in --output/<pipeline>-<timestamp>/<task>/; MLflow runs go to tracking.uri. "
        "Kubernetes settings (GPUs, node selectors, secrets, retries) do not apply locally.",
    )
    kfp_local.add_argument("--output", metavar="DIR", help="pipeline root (default: pipelines/local_outputs)")
    kfp_local.add_argument("--cache", action="store_true", help="reuse outputs of earlier local runs with the same inputs")
    kfp_local.set_defaults(run=_pipeline_run_local)
    kfp_submit = kfp_commands.add_parser(
        "submit",
        parents=[common],
        help="compile and start a run on a Kubeflow Pipelines server",
        description="Compile the pipeline for this config (with --set overrides) and start a run through "
        "kfp.Client at --host.",
    )
    kfp_submit.add_argument("--host", required=True, metavar="URL", help="the Kubeflow Pipelines API endpoint")
    kfp_submit.add_argument("--experiment", metavar="NAME", help="KFP experiment (default: tracking.experiment)")
    kfp_submit.add_argument("--run-name", metavar="NAME", help="default: <pipeline>-<UTC timestamp>")
    kfp_submit.add_argument("--namespace", metavar="NS", help="the Kubeflow profile namespace (multi-user)")
    kfp_submit.add_argument(
        "--no-cache", dest="enable_caching", action="store_const", const=False, default=None,
        help="run every task again, whatever kubeflow.stages.<stage>.caching says",
    )
    kfp_submit.set_defaults(run=_pipeline_submit)
    return parser


def _fetch(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.data.fetch import fetch

    for name, digest in fetch(cfg, args.tasks, force=args.force).items():
        print(f"{name}\tsha256:{digest}")


def _prepare(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.data.prepare import prepare

    for name, summary in prepare(cfg, args.tasks).items():
        print(f"{name}\t" + json.dumps(summary["rows"]))


def _validate(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.validation import validate

    for name, summary in validate(cfg, args.tasks).items():
        counts = summary["expectations"]
        warned = f", {counts['failed_warn']} warned" if counts["failed_warn"] else ""
        print(f"{name}\t{summary['status']}\t{summary['rows_checked']} rows, {counts['evaluated']} expectations{warned}")


def _pretrain(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.training.pretrain import pretrain

    result = pretrain(cfg, resume=args.resume)
    if cfg.pretrain.enabled:
        held = result["heldout"]
        print(f"held-out perplexity\t{held['perplexity_before']:.2f} -> {held['perplexity_after']:.2f}")
        print(f"encoder\t{cfg.path(cfg.pretrain.output)}")


def _finetune(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.training.finetune import finetune
    from unitask.training.trainer import is_main_process
    from unitask.tuning.katib import metric_line

    summary = finetune(cfg, args.task, resume=args.resume)
    if is_main_process():
        metric = summary["main_metric"]
        print(f"{args.task}\tvalidation {metric} {summary['validation'][metric]:.4f}\ttest {metric} {summary['test'][metric]:.4f}")
        print(metric_line(metric, summary["validation"][metric]))  # for Katib's metrics collector


def _tune(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.tuning.search import tune

    summary = tune(cfg, args.stage, args.task, report=lambda line: print(line, flush=True))
    best = " ".join(f"{k}={v}" for k, v in summary["best_params"].items())
    print(f"best\t{summary['metric']} {summary['best_value']:.4f}\t{best}\t({summary['complete']} complete, "
          f"{summary['pruned']} pruned, {summary['seconds']:.0f} s)")
    print(f"params\t{summary['params_file']}\nkatib\t{summary['katib_file']}")


def _fusion(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.training.fusion import fusion, fusion_tasks

    for name in args.tasks or fusion_tasks(cfg):
        summary = fusion(cfg, name)
        metric = summary["main_metric"]
        cells = "\t".join(f"{m} {r['test'][metric]:.4f}" for m, r in summary["models"].items())
        print(f"{name}\ttest {metric}\t{cells}")


def _multitask(cfg: Config, args: argparse.Namespace) -> None:
    if args.compare:
        from unitask.evaluation.multitask_comparison import compare_multitask

        result = compare_multitask(cfg)
        for name, row in result["tasks"].items():
            single = "–" if row["single_task"] is None else f"{row['single_task']:.4f}"
            print(f"{name}\t{row['metric']}\tsingle-task {single}\tmulti-task {row['multitask']:.4f}")
        mean, compute = result["mean"], result["compute"]
        print(f"mean\tsingle-task {mean['single_task']:.4f}\tmulti-task {mean['multitask']:.4f}")
        print(f"seconds\tsingle-task {compute['single_task']['seconds']:.0f}\tmulti-task {compute['multitask']['seconds']:.0f}")
        print(f"comparison\t{cfg.path(cfg.multitask.comparison)}")
        return
    from unitask.training.multitask import multitask
    from unitask.training.trainer import is_main_process

    summary = multitask(cfg, resume=args.resume)
    if is_main_process():
        for name, metric in summary["main_metrics"].items():
            print(f"{name}\tvalidation {metric} {summary['validation'][name][metric]:.4f}"
                  f"\ttest {metric} {summary['test'][name][metric]:.4f}")
        print(f"mean\tvalidation {summary['validation']['mean_score']:.4f}\ttest {summary['test']['mean_score']:.4f}")
        print(f"model\t{cfg.path(cfg.multitask.output)}")


def _llm(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.llm.train import llm
    from unitask.training.trainer import is_main_process

    summary = llm(cfg, resume=args.resume)
    if is_main_process():
        for name, metric in summary["main_metrics"].items():
            zero = summary["zeroshot"]["test"][name][metric] if summary["zeroshot"] else float("nan")
            print(f"{name}\ttest {metric}\tllm {summary['test'][name][metric]:.4f}\tllm_zeroshot {zero:.4f}"
                  f"\tunparsed {summary['test'][name]['unparsed']}")
        print(f"model\t{cfg.path(cfg.llm.output)}")


def _predict(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.inference.command import predict_command

    predict_command(cfg, args)


def _baseline(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.baselines import baseline, baseline_tasks

    for name in args.tasks or baseline_tasks(cfg):
        summary = baseline(cfg, name)
        metric = summary["main_metric"]
        print(f"{name}\tvalidation {metric} {summary['validation'][metric]:.4f}\ttest {metric} {summary['test'][metric]:.4f}")

def _evaluate(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.evaluation.stage import evaluate

    result = evaluate(cfg)
    for task, entry in result["tasks"].items():
        main = entry["main_metric"]
        cells = "\t".join(f"{m} {v[main]:.4f}" for m, v in result["table"][task].items())
        print(f"{task}\t{main}\t{cells}")


def _register(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.registry import register

    decision = register(cfg)
    print(f"{decision['name']}\tversion {decision['version']}\t{decision['decision']}: {decision['reason']}")


def _pipeline_compile(cfg: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from unitask.kubeflow.project import compile_pipeline

    print(f"compiled\t{compile_pipeline(cfg, Path(args.output).resolve() if args.output else None)}")


def _pipeline_run_local(cfg: Config, args: argparse.Namespace) -> None:
    from pathlib import Path

    from unitask.kubeflow.project import run_local

    run = run_local(cfg, Path(args.output).resolve() if args.output else None, cache=args.cache)
    print(f"outputs\t{run}")


def _pipeline_submit(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.kubeflow.project import submit

    run_id = submit(cfg, args.host, args.experiment, args.run_name, args.namespace, args.enable_caching)
    print(f"run\t{run_id}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[Config, argparse.Namespace], None] = args.run
    # SIGTERM (Kubernetes preemption, `kill`) unwinds like an exception: MLflow runs end KILLED and
    # atomic writers remove their temporary files
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        cfg = load_config(args.params, args.overrides)
        run(cfg, args)
    except UnitaskError as exc:
        if args.debug:
            raise
        print(f"unitask: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("unitask: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
