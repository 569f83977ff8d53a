"""The MLflow UI, in a real browser (Debian's headless Chromium driven by Playwright), on a store that
unitask's tracking code built: one pipeline run with two stage runs nested under it, two models
logging the same test/<task>/<metric>. It checks what a person sees: the experiment opens on the
training runs, the parent holds its stage runs, the compare view lines the models up per metric.

`make browser` installs Chromium; `make screenshots` (UNITASK_SCREENSHOTS=docs) keeps the pictures of the
runs list and the compare view for the README (docs/mlflow-runs.png, docs/mlflow-compare.png)."""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import Server, free_port, text_project

from unitask.config import load_config
from unitask.tracking import experiment_url, log_datasets, log_trained_model, pipeline, stage_run, tracking_uri

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SCORES = {"baseline": 0.81, "finetune": 0.93}  # test/toy/macro_f1 of the two models
WAIT_MS = 60_000  # a page of the UI on a loaded machine


def _store(root: Path) -> tuple[str, dict[str, str]]:
    """A pipeline run with a baseline and a fine-tune stage run, each with its data and a LoggedModel;
    returns the experiment id and {run name: run id}."""
    import mlflow

    cfg = load_config(text_project(root, "classification"))
    with pipeline(cfg, "dvc") as parent:
        for stage, score in SCORES.items():
            with stage_run(cfg, stage, "toy") as run:
                log_datasets(cfg, ["toy"])
                folder = root / "models" / stage
                folder.mkdir(parents=True)
                (folder / "weights.bin").write_bytes(stage.encode())
                results = {"validation": {"toy": {"macro_f1": score - 0.02}}, "test": {"toy": {"macro_f1": score}}}
                log_trained_model(f"{stage}-toy", folder, results)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    ids = {r.info.run_name: r.info.run_id for r in mlflow.search_runs([run.info.experiment_id], output_format="list")}
    assert ids[f"pipeline:dvc:{mlflow.get_run(parent).data.tags['unitask.pipeline_run']}"] == parent
    return run.info.experiment_id, ids


def _metric_row(page, key: str) -> list[str]:
    """The compare view's values of metric `key`, one per run column (a virtualized grid of names
    beside a grid of values, rows matched by their offset)."""
    return page.evaluate(
        """(key) => {
            const link = [...document.querySelectorAll('a[title="Plot chart"]')].find(a => a.textContent.trim() === key);
            const top = link.parentElement.style.top;
            const grids = [...document.querySelectorAll('[role="grid"]')];
            const values = grids[grids.indexOf(link.closest('[role="grid"]')) + 1];
            return [...values.querySelectorAll('[role="rowgroup"] > div')].filter(c => c.style.top === top)
                .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left)).map(c => c.textContent.trim());
        }""",
        key,
    )


def test_the_ui_shows_the_pipeline_run_its_stage_runs_and_the_models_side_by_side(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: run `make browser` (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    shots = os.environ.get("UNITASK_SCREENSHOTS")
    experiment, ids = _store(tmp_path)
    port = free_port()
    server = Server(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow/mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        port, "/health", tmp_path / "ui.log",
    )  # fmt: skip
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.set_default_timeout(WAIT_MS)

            page.goto(experiment_url(server.url, experiment))
            parent = next(name for name in ids if name.startswith("pipeline:"))
            page.get_by_text(parent).wait_for()  # the training runs, not the GenAI overview
            assert f"/#/experiments/{experiment}/runs?workflowType=machine_learning&" in page.url
            assert page.get_by_text("matching runs").is_visible() and not page.get_by_text("No data available").count()
            assert not page.get_by_text("finetune:toy").count()  # nested: hidden under the collapsed parent

            page.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').first.click()  # expand the parent
            page.get_by_text("finetune:toy").wait_for()
            assert page.get_by_text("baseline:toy").is_visible()
            if shots:
                page.get_by_role("button", name="Close").first.click()  # the assistant's side panel
                page.screenshot(path=f"{shots}/mlflow-runs.png", clip={"x": 0, "y": 0, "width": 1400, "height": 480})

            runs = json.dumps([ids["baseline:toy"], ids["finetune:toy"]])
            query = urllib.parse.urlencode({"runs": runs, "experiments": json.dumps([experiment]), "workflowType": "machine_learning"})
            page.goto(f"{server.url}/#/compare-runs?{query}")
            page.get_by_text("test/toy/macro_f1").first.wait_for()
            assert _metric_row(page, "test/toy/macro_f1") == [str(SCORES["baseline"]), str(SCORES["finetune"])]
            assert _metric_row(page, "validation/toy/macro_f1") == [f"{s - 0.02:.2f}" for s in SCORES.values()]
            if shots:
                page.wait_for_timeout(3000)  # the plot draws
                page.screenshot(path=f"{shots}/mlflow-compare.png", full_page=True)
            browser.close()
    finally:
        server.stop()
