"""`unitask`: one subcommand per stage. Each parses its arguments, loads the config and calls the
stage function; errors the user can fix print as one short message and a non-zero exit code."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from unitask import commands
from unitask.config import Config, load_config
from unitask.errors import UnitaskError
from unitask.stages import STAGES, Option, task_filter

EPILOG = "Run `unitask COMMAND --help` for a command's options. Docs: README.md and docs/ (`make docs` serves them)."


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


@dataclass(frozen=True)
class Command:
    """A subcommand that is not a stage (those come from `unitask.stages`): under `group` when set."""

    name: str
    help: str
    description: str
    run: Callable[[Config, argparse.Namespace], None]
    options: tuple[Option, ...] = ()
    group: str | None = None


def _opt(*flags: str, **kwargs: Any) -> Option:
    return Option(flags, kwargs)


GROUPS = {  # name: (help, description)
    "data": ("data sources", "Work with the declared data sources."),
    "task": ("declare tasks", "Declare a new task from a data file."),
    "pipeline": (
        "Kubeflow Pipelines: compile, run locally, submit",
        "The graph dvc.yaml runs, as Kubeflow Pipelines: one component per step (a stage, or one task of a per-task "
        "stage), each reading the outputs of the steps its deps name. Pipeline parameters mirror params.yaml; the "
        "`kubeflow` section sets the image, resources, GPUs, retries, caching and secret names.",
    ),
}

COMMANDS = (
    Command(
        "fetch", "materialize data/raw from the sources in params.yaml",
        "Copy each task's declared source (local path, installed package, Hugging Face hub, s3://) into "
        "data/raw/<task>/, checking its sha256 when the config declares one.",
        commands.fetch_command, group="data",
        options=(task_filter("fetch"), _opt("--force", action="store_true", help="fetch again even when data/raw is up to date")),
    ),
    Command(
        "add", "declare a task from a CSV, TSV, JSONL, JSON, Parquet or CoNLL file, then fetch, prepare and validate it",
        "Read FILE with the project's readers (the format from its suffix), propose the task's declaration (its type "
        "from the columns: tokens and tags: token_classification; a text column and a label: classification, or "
        "regression for a numeric label with many values; two text columns and a label: pair_classification; the "
        "roles, the label list and the reader options), write it into params.yaml with its comments kept, and run "
        "fetch, prepare and validate on the new task. When the file leaves a choice open (two candidate label "
        "columns, say), it stops with the question and the flag that answers it, and params.yaml is unchanged.",
        commands.task_add_command, group="task",
        options=(_opt("file", metavar="FILE", help="the data file (a path from here), inside the project or paths.roots"),
                 _opt("--name", metavar="NAME", help="the task's name (default: the file's name)"),
                 _opt("--text", metavar="COLUMN", help="the text column"),
                 _opt("--text-pair", metavar="COLUMN", help="the second text column (pair classification)"),
                 _opt("--label", metavar="COLUMN", help="the label column")),
    ),
    Command(
        "tune", "hyperparameter search for a task's fine-tuning (Optuna; also writes a Katib Experiment)",
        "Search tune.space (learning rate, batch size, epochs, warmup, weight decay, ...) for one task with Optuna's "
        "TPE sampler and median pruning on the validation metric; each trial trains with tune.budget (e.g. a cap on "
        "train rows) in a temporary folder and is a child MLflow run of one `tune` run. Prints one line per trial; "
        "writes the best values to <tune.output>/<task>.yaml (tasks.<task>.finetune, to merge into params.yaml) and "
        "the same search as a Katib v1beta1 Experiment to <tune.output>/<task>-katib.yaml. The fine-tune stage's "
        "outputs are not touched.",
        commands.tune_command,
        options=(_opt("--stage", default="finetune", choices=["finetune"], help="the stage to tune (default: %(default)s)"),
                 _opt("--task", required=True, metavar="NAME", help="the task to tune")),
    ),
    Command(
        "predict", "answer one input (or a JSON-lines file of them) with a saved model",
        "Load the saved models (default: multitask.output, one model for every text task, and fusion.output for "
        "text+image tasks; each row goes to the model that answers its task) and print the output for the task as "
        "JSON: {label, scores}, {value}, {tags, entities} or {answer, start, end, score}. Pair classification takes "
        "--text-pair; extractive QA takes the question as --text and the context as --text-pair; token "
        "classification splits --text on white space. --input reads rows {task, text, text_pair, image} (one JSON "
        "object a line; - for standard input) and prints one JSON line per row.",
        commands.predict_command,
        options=(_opt("--task", metavar="NAME", help="the task to answer"),
                 _opt("--text", help="the input text (extractive QA: the question)"),
                 _opt("--text-pair", metavar="TEXT", help="the second text (pair classification; QA: the context)"),
                 _opt("--image", metavar="FILE", help="the image of a text+image task"),
                 _opt("--input", metavar="FILE", help="JSON lines of rows to answer instead (- reads standard input)"),
                 _opt("--model", metavar="DIR", help="one saved model folder instead of the defaults above")),
    ),
    Command(
        "summary", "what to read after a pipeline run: each model's main metric per task, the champion, where to look",
        "Print, per task, each model's test main metric side by side (evaluate.output/comparison.json), the "
        "registry's champion decision (register.output), and where to look next: the MLflow UI on the Model "
        "training view with the filter for the last pipeline run, comparison.md, `dvc plots show`.",
        commands.summary_command,
        options=(_opt("--link", action="store_true", help="print only the experiment's link in the MLflow UI"),),
    ),
    Command(
        "repro", "`dvc repro` as one pipeline run in MLflow: the stages' runs nest under one parent",
        "Run `dvc repro` with UNITASK_PIPELINE_RUN set, under a parent MLflow run that carries the git commit, the "
        "dirty flag and the config's hashes; the parent ends FINISHED, or FAILED with dvc. Arguments after `--` go "
        "to dvc, e.g. `unitask repro -- finetune --force`.",
        commands.repro_command,
        options=(_opt("dvc_args", nargs=argparse.REMAINDER, help="arguments for `dvc repro`"),),
    ),
    Command(
        "compile", "write the compiled pipeline YAML (kubeflow.package)",
        "Compile the pipeline for this config into kubeflow.package (default pipelines/unitask.yaml). Secrets are "
        "referenced by name only.",
        commands.pipeline_compile_command, group="pipeline",
        options=(_opt("--output", metavar="FILE", help="write here instead of kubeflow.package"),),
    ),
    Command(
        "run-local", "run the whole pipeline here with kfp's local runner (no cluster, no Docker)",
        "Run the same pipeline with kfp.local's SubprocessRunner in this Python environment. Artifacts land in "
        "--output/<pipeline>-<timestamp>/<task>/; MLflow runs go to tracking.uri. Kubernetes settings (GPUs, node "
        "selectors, secrets, retries) do not apply locally.",
        commands.pipeline_run_local_command, group="pipeline",
        options=(_opt("--output", metavar="DIR", help="pipeline root (default: pipelines/local_outputs)"),
                 _opt("--cache", action="store_true", help="reuse outputs of earlier local runs with the same inputs"),
                 _opt("--stage", dest="stages", action="append", metavar="NAME",
                      help="run only this stage and the steps it needs (repeatable; default: all)")),
    ),
    Command(
        "submit", "compile and start a run on a Kubeflow Pipelines server",
        "Compile the pipeline for this config (with --set overrides) and start a run through kfp.Client at --host.",
        commands.pipeline_submit_command, group="pipeline",
        options=(_opt("--host", required=True, metavar="URL", help="the Kubeflow Pipelines API endpoint"),
                 _opt("--experiment", metavar="NAME", help="KFP experiment (default: tracking.experiment)"),
                 _opt("--run-name", metavar="NAME", help="default: <pipeline>-<UTC timestamp>"),
                 _opt("--namespace", metavar="NS", help="the Kubeflow profile namespace (multi-user)"),
                 _opt("--no-cache", dest="enable_caching", action="store_const", const=False, default=None,
                      help="run every task again, whatever kubeflow.stages.<stage>.caching says")),
    ),
    Command(
        "dvc", "write dvc.yaml from the stage declarations and this config",
        "Generate dvc.yaml: one DVC stage per declared stage (a foreach over the tasks for per-task stages), its "
        "params the config keys it reads, its deps its data and the unitask modules its function imports, its outs, "
        "metrics and plots. Run it after editing tasks or a stage; stages run by `dvc repro` refuse a dvc.yaml that "
        "is out of date.",
        commands.dvc_command,
        options=(_opt("--check", action="store_true", help="write nothing; exit 2 when dvc.yaml is out of date"),),
    ),
    Command(
        "docs", "write the documentation site's generated pages: the reference from the code, the home page from README.md",
        "Generate, under the project root, docs/reference/config.md (every key of params.yaml: type, default, "
        "description), docs/reference/stages.md (every stage: command, help, config keys, reads, writes, pod) and "
        "docs/index.md (README.md with its links made relative to docs/). `make docs` serves the site.",
        commands.docs_command,
        options=(_opt("--check", action="store_true", help="write nothing; exit 2 when a page is out of date"),),
    ),
)  # fmt: skip


def _add(subcommands: Any, common: argparse.ArgumentParser, name: str, help: str, description: str,
         options: tuple[Option, ...], run: Callable[[Config, argparse.Namespace], None]) -> None:  # fmt: skip
    sub = subcommands.add_parser(name, parents=[common], help=help, description=description)
    for option in options:
        sub.add_argument(*option.flags, **option.kwargs)
    sub.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    """The `unitask` parser: a subcommand per declared stage (its help and options from the
    declaration), then the other commands of `COMMANDS`, some grouped (`data fetch`, `pipeline compile`)."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="unitask",
        description="Train one language model for many NLP tasks: fetch and prepare data, "
        "validate it, pretrain, fine-tune, multi-task and fusion training, evaluate, register.",
        epilog=EPILOG,
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}

    def where(command: Command) -> Any:
        if command.group is None:
            return subcommands
        if command.group not in groups:  # made where its first command comes, so `--help` lists it there
            help, description = GROUPS[command.group]
            group = subcommands.add_parser(command.group, help=help, description=description)
            groups[command.group] = group.add_subparsers(dest=f"{command.group}_command", required=True, metavar="COMMAND")
        return groups[command.group]

    first = [c for c in COMMANDS if c.group in ("data", "task")]  # before the stages they feed
    for command in first:
        _add(where(command), common, command.name, command.help, command.description, command.options, command.run)
    for stage in STAGES.values():
        body = commands.STAGE_BODIES.get(stage.name, stage.execute)
        _add(subcommands, common, stage.command, stage.summary, stage.description, stage.options, body)
    for command in COMMANDS:
        if command not in first:
            _add(where(command), common, command.name, command.help, command.description, command.options, command.run)
    return parser


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
