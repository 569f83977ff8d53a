"""`unitask`: one subcommand per stage. Each parses its arguments, loads the config and calls the
stage function; errors the user can fix print as one short message and a non-zero exit code."""

from __future__ import annotations

import argparse
import json
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
    return parser


def _fetch(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.data.fetch import fetch

    for name, digest in fetch(cfg, args.tasks, force=args.force).items():
        print(f"{name}\tsha256:{digest}")


def _prepare(cfg: Config, args: argparse.Namespace) -> None:
    from unitask.data.prepare import prepare

    for name, summary in prepare(cfg, args.tasks).items():
        print(f"{name}\t" + json.dumps(summary["rows"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[Config, argparse.Namespace], None] = args.run
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
