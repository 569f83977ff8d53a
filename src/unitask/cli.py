"""`unitask`: one subcommand per stage. Each parses its arguments, loads the config and calls the
stage function; errors the user can fix print as one short message and a non-zero exit code."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from unitask import commands
from unitask.config import Config, load_config
from unitask.errors import UnitaskError
from unitask.stages import STAGES, task_filter

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


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="unitask",
        description="Train one language model for many NLP tasks: fetch and prepare data, "
        "validate it, pretrain, fine-tune, multi-task and fusion training, evaluate, register.",
        epilog=EPILOG,
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_data_commands, _stage_commands, _tune_command, _predict_command, _summary_command, _repro_command,
                _pipeline_commands, _dvc_command, _docs_command):
        add(subcommands, common)
    return parser


Subparsers = Any  # argparse's _SubParsersAction


def _data_commands(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    data = subcommands.add_parser("data", help="data sources", description="Work with the declared data sources.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    fetch = data_commands.add_parser(
        "fetch",
        parents=[common],
        help="materialize data/raw from the sources in params.yaml",
        description="Copy each task's declared source (local path, installed package, Hugging Face hub, "
        "s3://) into data/raw/<task>/, checking its sha256 when the config declares one.",
    )
    only = task_filter("fetch")
    fetch.add_argument(*only.flags, **only.kwargs)
    fetch.add_argument("--force", action="store_true", help="fetch again even when data/raw is up to date")
    fetch.set_defaults(run=commands.fetch_command)


def _stage_commands(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    """One subcommand per declared stage: its help and options from the declaration."""
    for stage in STAGES.values():
        sub = subcommands.add_parser(stage.command, parents=[common], help=stage.summary, description=stage.description)
        for option in stage.options:
            sub.add_argument(*option.flags, **option.kwargs)
        sub.set_defaults(run=commands.STAGE_BODIES.get(stage.name, stage.execute))


def _tune_command(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    tune = subcommands.add_parser(
        "tune",
        parents=[common],
        help="hyperparameter search for a task's fine-tuning (Optuna; also writes a Katib Experiment)",
        description="Search tune.space (learning rate, batch size, epochs, warmup, weight decay, ...) for one "
        "task with Optuna's TPE sampler and median pruning on the validation metric; each trial trains with "
        "tune.budget (e.g. a cap on train rows) in a temporary folder and is a child MLflow run of one `tune` "
        "run. Prints one line per trial; writes the best values to <tune.output>/<task>.yaml "
        "(tasks.<task>.finetune, to merge into params.yaml) and the same search as a Katib v1beta1 "
        "Experiment to <tune.output>/<task>-katib.yaml. The fine-tune stage's outputs are not touched.",
    )
    tune.add_argument("--stage", default="finetune", choices=["finetune"], help="the stage to tune (default: %(default)s)")
    tune.add_argument("--task", required=True, metavar="NAME", help="the task to tune")
    tune.set_defaults(run=commands.tune_command)


def _predict_command(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    predict = subcommands.add_parser(
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
    predict.add_argument("--task", metavar="NAME", help="the task to answer")
    predict.add_argument("--text", help="the input text (extractive QA: the question)")
    predict.add_argument("--text-pair", metavar="TEXT", help="the second text (pair classification; QA: the context)")
    predict.add_argument("--image", metavar="FILE", help="the image of a text+image task")
    predict.add_argument("--input", metavar="FILE", help="JSON lines of rows to answer instead (- reads standard input)")
    predict.add_argument("--model", metavar="DIR", help="one saved model folder instead of the defaults above")
    predict.set_defaults(run=commands.predict_command)


def _summary_command(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    summary = subcommands.add_parser(
        "summary",
        parents=[common],
        help="what to read after a pipeline run: each model's main metric per task, the champion, where to look",
        description="Print, per task, each model's test main metric side by side (evaluate.output/comparison.json), "
        "the registry's champion decision (register.output), and where to look next: the MLflow UI on the "
        "Model training view with the filter for the last pipeline run, comparison.md, `dvc plots show`.",
    )
    summary.add_argument("--link", action="store_true", help="print only the experiment's link in the MLflow UI")
    summary.set_defaults(run=commands.summary_command)


def _repro_command(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    repro = subcommands.add_parser(
        "repro",
        parents=[common],
        help="`dvc repro` as one pipeline run in MLflow: the stages' runs nest under one parent",
        description="Run `dvc repro` with UNITASK_PIPELINE_RUN set, under a parent MLflow run that carries the git "
        "commit, the dirty flag and the config's hashes; the parent ends FINISHED, or FAILED with dvc. "
        "Arguments after `--` go to dvc, e.g. `unitask repro -- finetune --force`.",
    )
    repro.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for `dvc repro`")
    repro.set_defaults(run=commands.repro_command)


def _pipeline_commands(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    kfp_group = subcommands.add_parser(
        "pipeline",
        help="Kubeflow Pipelines: compile, run locally, submit",
        description="The graph dvc.yaml runs, as Kubeflow Pipelines: one component per step (a stage, or one task "
        "of a per-task stage), each reading the outputs of the steps its deps name. Pipeline parameters mirror "
        "params.yaml; the `kubeflow` section sets the image, resources, GPUs, retries, caching and secret names.",
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
    kfp_compile.set_defaults(run=commands.pipeline_compile_command)
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
    kfp_local.add_argument("--stage", dest="stages", action="append", metavar="NAME",
                           help="run only this stage and the steps it needs (repeatable; default: all)")  # fmt: skip
    kfp_local.set_defaults(run=commands.pipeline_run_local_command)
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
    kfp_submit.set_defaults(run=commands.pipeline_submit_command)


def _dvc_command(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    dvc = subcommands.add_parser(
        "dvc",
        parents=[common],
        help="write dvc.yaml from the stage declarations and this config",
        description="Generate dvc.yaml: one DVC stage per declared stage (a foreach over the tasks for per-task "
        "stages), its params the config keys it reads, its deps its data and the unitask modules its function "
        "imports, its outs, metrics and plots. Run it after editing tasks or a stage; stages run by `dvc repro` "
        "refuse a dvc.yaml that is out of date.",
    )
    dvc.add_argument("--check", action="store_true", help="write nothing; exit 2 when dvc.yaml is out of date")
    dvc.set_defaults(run=commands.dvc_command)


def _docs_command(subcommands: Subparsers, common: argparse.ArgumentParser) -> None:
    docs = subcommands.add_parser(
        "docs",
        parents=[common],
        help="write the documentation site's generated pages: the reference from the code, the home page from README.md",
        description="Generate, under the project root, docs/reference/config.md (every key of params.yaml: type, "
        "default, description), docs/reference/stages.md (every stage: command, help, config keys, reads, writes, "
        "pod) and docs/index.md (README.md with its links made relative to docs/). `make docs` serves the site.",
    )
    docs.add_argument("--check", action="store_true", help="write nothing; exit 2 when a page is out of date")
    docs.set_defaults(run=commands.docs_command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[Config, argparse.Namespace], None] = args.run
    # SIGTERM (Kubernetes preemption, `kill`) unwinds like an exception: MLflow runs end KILLED and
    # atomic writers remove their temporary files
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        cfg = load_config(args.params, args.overrides)
        if args.command.replace("-", "_") in STAGES:
            from unitask.dvcfile import check_under_dvc

            check_under_dvc(cfg, args.params)
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
