"""The stage declarations (src/unitask/stages.py): the drivers made from them agree with each other,
with the code's real imports, and with params.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, classification_task, write_project
from unitask.cli import build_parser, main
from unitask.codedeps import imports
from unitask.config import Config, load_config
from unitask.stages import STAGES


def test_dvc_yaml_is_generated_from_the_declarations(capsys: pytest.CaptureFixture[str]) -> None:
    """The committed dvc.yaml is what `unitask dvc` makes of params.yaml and the code."""
    assert main(["dvc", "--check", "--params", str(REPO / "params.yaml")]) == 0, capsys.readouterr().err


def test_check_catches_a_stale_dvc_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = write_project(tmp_path, {"t": classification_task("x.csv")})
    assert main(["dvc", "--params", str(params)]) == 0
    assert main(["dvc", "--check", "--params", str(params)]) == 0
    dvc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    assert dvc["stages"]["finetune"]["foreach"] == ["t"] and "fusion" not in dvc["stages"]  # no text+image task
    (tmp_path / "dvc.yaml").write_text((tmp_path / "dvc.yaml").read_text().replace("- seed\n", "", 1))  # planted
    capsys.readouterr()
    assert main(["dvc", "--check", "--params", str(params)]) == 2
    assert "dvc.yaml: out of date" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(STAGES))
def test_code_deps_hold_what_the_stage_really_imports(name: str) -> None:
    """Every unitask module that importing the stage's function loads is among its declared code deps
    (the static reading also follows the imports inside functions, which a plain import does not run)."""
    stage = STAGES[name]
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, importlib; importlib.import_module(sys.argv[1]); "
         "print('\\n'.join(m for m in sys.modules if m == 'unitask' or m.startswith('unitask.')))", stage.module],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert callable(stage.load())
    assert stage.module in loaded and set(loaded) <= set(imports(stage.module)), set(loaded) - set(imports(stage.module))


def test_no_stage_depends_on_a_driver() -> None:
    """Editing the Kubeflow driver or its schema, the CLI or the DVC generator reruns no stage: no stage
    imports them (the prepare stage, for one, reads only the config's data sections and its own code)."""
    drivers = ("unitask.kubeflow", "unitask.cli", "unitask.commands", "unitask.dvcfile", "unitask.stages", "unitask.graph")
    for stage in STAGES.values():
        reached = [m for m in imports(stage.module) if m.startswith(drivers)]
        assert reached == [], (stage.name, reached)
    assert "unitask.kubeflow.settings" not in imports("unitask.config")


def test_every_stage_is_a_subcommand_with_its_options() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for stage in STAGES.values():
        sub = commands[stage.command]
        assert sub.description == stage.description
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert {"--params", "--set"} <= flags and all(set(o.flags) <= flags for o in stage.options)


@pytest.mark.parametrize("listed, expected", [(None, ["a", "b"]), ([], []), (["b"], ["b"])])
def test_one_rule_for_task_lists_in_every_driver(tmp_path: Path, listed: list[str] | None, expected: list[str]) -> None:
    """Unset: every declared task of a type the stage trains; empty: none; else the list. The CLI's
    config, the generated dvc.yaml and the Kubeflow pipeline's steps agree."""
    from unitask.dvcfile import render
    from unitask.kubeflow.pipeline import plan

    tasks = {"a": classification_task("a.csv"), "b": classification_task("b.csv")}
    finetune = {} if listed is None else {"tasks": listed}
    cfg = load_config(write_project(tmp_path, tasks, finetune=finetune))
    assert cfg.finetune_tasks() == expected
    stages = yaml.safe_load(render(cfg))["stages"]
    assert (stages["finetune"]["foreach"] if "finetune" in stages else []) == expected
    assert ("finetune" in stages) == bool(expected)
    assert [step.task for step, _ in plan(cfg) if step.stage.name == "finetune"] == expected


def test_fusion_without_tasks_trains_nothing_under_every_driver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unitask.dvcfile import render

    params = write_project(tmp_path, {"a": classification_task("a.csv")}, fusion={"tasks": []})
    assert main(["fusion", "--params", str(params)]) == 0
    assert "no text+image task to train" in capsys.readouterr().out
    cfg = load_config(params)
    stages = yaml.safe_load(render(cfg))["stages"]
    assert "fusion" not in stages and "models/fusion" not in stages["register"]["deps"]


def test_replacing_tasks_is_all_a_new_project_needs(tmp_path: Path) -> None:
    """The default params.yaml with its tasks replaced by one new task loads, and every stage runs it."""
    from unitask.dvcfile import render

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tasks"] = {"reviews": classification_task("data/reviews.csv")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(tmp_path / "params.yaml")
    assert cfg.finetune_tasks() == cfg.multitask_tasks() == ["reviews"] and cfg.fusion_tasks() == []
    stages = yaml.safe_load(render(cfg))["stages"]
    assert stages["prepare"]["foreach"] == stages["finetune"]["foreach"] == ["reviews"] and "fusion" not in stages


def _effective(cfg: Config) -> dict[str, Any]:
    from unitask.kubeflow.settings import kubeflow_settings
    from unitask.validation.checks import DEFAULT_SEVERITY

    dumped = cfg.model_dump(mode="json", exclude={"tasks"})
    dumped["kubeflow"] = kubeflow_settings(cfg).model_dump(mode="json")  # validated by its driver
    dumped["validate"]["severity"] = {**DEFAULT_SEVERITY, **dumped["validate"]["severity"]}
    return dumped


def test_defaults_have_one_home() -> None:
    """Every setting params.yaml writes equals the code's default: the two cannot drift apart."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    written = _effective(Config.model_validate(raw))
    defaults = _effective(Config.model_validate({"tasks": raw["tasks"]}))

    def differences(given: Any, ours: Any, theirs: Any, key: str) -> list[str]:
        if isinstance(given, dict):
            return [d for k, v in given.items() for d in differences(v, ours[k], theirs[k], f"{key}.{k}".lstrip("."))]
        return [] if ours == theirs else [f"{key}: params.yaml {ours!r}, code {theirs!r}"]

    found = differences({k: v for k, v in raw.items() if k != "tasks"}, written, defaults, "")
    assert found == []
