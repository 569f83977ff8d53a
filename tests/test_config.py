"""The config: the default loads, overrides apply, and every kind of bad config exits 2 naming the key."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import REPO, classification_task, keyword_rows
from unitask.cli import main
from unitask.config import load_config
from unitask.errors import ConfigError


def test_default_params_load_and_declare_the_offline_tasks():
    cfg = load_config(REPO / "params.yaml")
    assert {
        "bbc_topic": "classification",
        "sms_spam": "classification",
        "trec_coarse": "classification",
        "movie_sentiment": "regression",
        "wnut_ner": "token_classification",
        "easy_vqa": "multimodal_classification",
    }.items() <= {name: t.type for name, t in cfg.tasks.items()}.items()
    assert cfg.root == REPO
    assert all(t.source.sha256 for t in cfg.tasks.values())


def test_params_rewritten_by_dvc_still_load(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml with DVC's own YAML writer, which drops the quotes
    around easy_vqa's "yes"/"no" labels; params are read as YAML 1.2, as DVC reads them, so they stay labels."""
    import shutil

    import yaml
    from dvc.utils.serialize import modify_yaml

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    with modify_yaml(params) as data:  # what `dvc exp run -S multitask.learning_rate=0.0005` does
        data["multitask"]["learning_rate"] = 0.0005
    assert True in yaml.safe_load(params.read_text())["tasks"]["easy_vqa"]["labels"]  # YAML 1.1 would read a boolean
    cfg = load_config(params)
    assert cfg.multitask.learning_rate == 0.0005 and {"yes", "no"} <= set(cfg.tasks["easy_vqa"].labels)


def test_overrides_parse_values_as_yaml(project):
    params = project({"t": classification_task("d.csv")})
    cfg = load_config(params, ["prepare.max_rows=50", "seed=3", "tasks.t.labels=[a, b]"])
    assert cfg.prepare.max_rows == 50 and cfg.seed == 3
    assert cfg.tasks["t"].labels == ["a", "b"]


def _error(params, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(params, list(overrides))
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("colour=blue", "colour: unknown key; allowed here: seed, paths, tracking"),
        ("prepare.max_rowz=5", "prepare.max_rowz: unknown key; allowed here: validation_fraction"),
        ("tasks.t.lables=[a]", "tasks.t.lables: unknown key; allowed here: type, source, read"),
        ("seed=abc", "seed: Input should be a valid integer"),
        ("tasks.t.type=clasification", "tasks.t.type: Input should be 'classification'"),
        ("tasks.t.source.kind=ftp", "tasks.t.source: Input tag 'ftp'"),
        ("tasks.t.source.pathx=a", "tasks.t.source.pathx: unknown key; allowed here: kind, path, sha256"),
        ("tasks.t.columns={text: text}", "tasks.t.columns: type 'classification' needs roles"),
        ("tasks.t.labels=[true, false]", "tasks.t.labels.0: Input should be a valid string; quote it"),
        ("tasks.t.read.format=regex", "format 'regex' needs 'pattern'"),
        ("prepare.test_fraction=0.9", "prepare.test_fraction: Input should be less than 0.5"),
        ("tasks.Bad-Name={}", "tasks.Bad-Name.type: required key is missing"),
    ],
)
def test_bad_config_names_the_key(project, override, expected):
    params = project({"t": classification_task("d.csv")})
    assert expected in _error(params, override)


def test_unparsable_and_missing_files(tmp_path):
    assert "no such params file" in _error(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("tasks: [unclosed\n")
    assert "not valid YAML" in _error(bad)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(REPO / "params.yaml", ["justakey"])


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing_data", "tasks.t.source.path: 'd.csv' does not exist"),
        ("unknown_task", "tasks.nope: no such task; declared tasks: t"),
        ("bad_labels", "tasks.t.labels: the label list does not match the data"),
        ("bad_column", "tasks.t.columns.label: no column 'category' in the raw data"),
        ("typo_label", "the data has labels not in the list: ['pso'] (raw rows [5])"),
        ("bad_key", "prepare.bogus: unknown key"),
    ],
)
def test_cli_refuses_bad_config_with_exit_2(project, tmp_path, capsys, setup, expected):
    tasks = {"t": classification_task("d.csv")}
    if setup != "missing_data":
        rows = keyword_rows(40)
        if setup == "typo_label":
            rows[5]["label"] = "pso"
        pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    if setup == "bad_labels":
        tasks["t"]["labels"] = ["neg", "pos", "neutral"]
    if setup == "bad_column":
        tasks["t"]["columns"]["label"] = "category"
    params = project(tasks)
    args = ["--params", str(params)]
    if setup == "bad_key":
        args += ["--set", "prepare.bogus=1"]
    task_arg = ["--task", "nope"] if setup == "unknown_task" else []
    if setup in ("bad_labels", "bad_column", "typo_label"):
        assert main(["data", "fetch", *args]) == 0
        code = main(["prepare", *args, *task_arg])
    else:
        code = main(["data", "fetch", *args, *task_arg])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


def _commands(parser, path=()):
    """Every (sub)command path of an argparse tree, from the parser's own subparser actions."""
    import argparse

    yield path, parser
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _has_subcommands(parser):
    import argparse

    return any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)


def test_every_command_has_help(capsys):
    """Each command and subcommand of `unitask` (walked from build_parser, so that a new stage is
    covered without editing this test) answers --help with exit 0, its usage and a description."""
    from unitask.cli import build_parser

    commands = list(_commands(build_parser()))
    assert len(commands) > 10 and ("data", "fetch") in {path for path, _ in commands}
    for path, parser in commands:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {' '.join(('unitask', *path))}"), (path, out[:200])
        assert parser.description and parser.description.split()[0] in out, f"`unitask {' '.join(path)}` has no description"
        if path and not _has_subcommands(parser):  # a command that runs reads the project's params
            assert "--params FILE" in out and "--set KEY=VALUE" in out, path

