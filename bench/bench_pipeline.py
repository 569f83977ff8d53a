"""The pipeline's own overhead: no-op `dvc repro`, and DVC vs kfp's local runner per task.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_pipeline.py noop [--project .] [--repeats 5]
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_pipeline.py chain [--repeats 1] [--noop-repeats 5]
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_pipeline.py full [--dry-run]

(prefix OMP_NUM_THREADS=1 on a small shared machine). Every subcommand prints Markdown tables of medians.
- `noop`: `dvc status` and `dvc repro` in a project whose pipeline is up to date (DVC hashes deps and
  params and checks dvc.lock; nothing runs); refuses if `dvc status` reports a change. Read-only.
- `chain`: a scratch copy of the project on the smoke profile (tests/smoke.yaml merged over params.yaml,
  data/raw from `unitask data fetch`, as tests/test_dvc_pipeline.py builds it) runs the whole chain
  with `dvc repro`, then `noop` there, then the same chain with `unitask pipeline run-local` (kfp's
  SubprocessRunner). Reports wall time, tasks run (DVC stages, kfp tasks), the overhead per task
  (kfp wall - DVC wall) / kfp tasks, and each task's time: from its start line in the streamed output
  ("Running stage ..." / "Executing task ...") to the next one or the end, runner bookkeeping included,
  and per stage (both run the same steps: a stage, or one task of a per-task stage).
  Each chain takes minutes on 2 CPU cores, so --repeats defaults to 1 (repeats rerun with --force).
- `full`: a scratch copy at the default params (about 25 minutes on CPU; `--here`: the project itself;
  `--keep DIR`: the copy in DIR, kept) runs every stage in `dvc dag` order with `dvc repro --force
  --single-item <stage>`; prints each stage's wall and CPU time (its processes' user + system), the
  load average after it, and the totals.
  --dry-run prints the stage order and the commands only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
UNITASK = str(BIN / "unitask")
COPY = ["params.yaml", "dvc.yaml", "data.dvc", ".dvcignore", "src"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DVC_START = re.compile(r"Running stage '([^']+)'")
KFP_START = re.compile(r"Executing task '([^']+)'")


def env() -> dict[str, str]:
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1"}
    return {**offline, **os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def run(args: list[str], cwd: Path) -> tuple[float, str]:
    """(seconds, stdout) of a command that must succeed."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env())
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def stream(args: list[str], cwd: Path, start: re.Pattern[str]) -> tuple[float, dict[str, float]]:
    """(wall seconds, seconds per task): a task runs from its `start` line to the next one or the end."""
    began = time.perf_counter()
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    with subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env()) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-200:], line]
            if found := start.search(ANSI.sub("", line)):
                marks.append((found.group(1), time.perf_counter()))
    wall = time.perf_counter() - began
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{''.join(tail)}")
    ends = [t for _, t in marks[1:]] + [began + wall]
    tasks: dict[str, float] = {}
    for (name, t0), t1 in zip(marks, ends):
        key = name if name not in tasks else f"{name} #{sum(k.split(' #')[0] == name for k in tasks) + 1}"
        tasks[key] = t1 - t0
    return wall, tasks


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) and value else value
    return base


def scratch_project(root: Path, smoke: bool) -> Path:
    """A copy of the project's pipeline in `root` with data/raw fetched and committed to DVC's cache."""
    root.mkdir(exist_ok=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    if smoke:
        params = merge(yaml.safe_load((root / "params.yaml").read_text()), yaml.safe_load((REPO / "tests/smoke.yaml").read_text()))
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], [DVC, "init", "-q"], [UNITASK, "data", "fetch"], [DVC, "commit", "--force", "-q", "data.dvc"]):
        run(args, root)
    return root


def noop(project: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of `dvc status` and of a no-op `dvc repro`, `repeats` times each."""
    status = json.loads(run([DVC, "status", "--json"], project)[1].strip().splitlines()[-1])
    if status:
        sys.exit(f"{project}: the pipeline is not up to date, so `dvc repro` would run stages; `dvc status` says:\n"
                 f"{json.dumps(status, indent=1)}")  # fmt: skip
    times: dict[str, list[float]] = {"dvc status": [], "dvc repro": []}
    for _ in range(repeats):
        for command in times:
            seconds, out = run([DVC, *command.split()[1:]], project)
            if "Running stage" in out:
                sys.exit(f"{project}: `{command}` ran a stage:\n{out[-3000:]}")
            times[command].append(seconds)
    return times


def print_noop(project: str, times: dict[str, list[float]]) -> None:
    print(f"\nno-op in {project}\n| command | median s | all s |\n|---|---|---|")
    for command, seconds in times.items():
        print(f"| `{command}` | {statistics.median(seconds):.2f} | {', '.join(f'{s:.2f}' for s in seconds)} |")


def print_tasks(title: str, runs: list[dict[str, float]]) -> None:
    print(f"\n| {title} | median s |\n|---|---|")
    for name in runs[0]:
        print(f"| {name} | {statistics.median(r.get(name, float('nan')) for r in runs):.1f} |")


def stage_of(name: str) -> str:
    """The stage of a DVC step (`finetune@sms_spam`) or a kfp task (`finetune-sms-spam`): `finetune`."""
    from unitask.stages import STAGES

    base = re.split(r"[@ ]", name)[0]
    dashed = sorted((s.replace("_", "-") for s in STAGES), key=len, reverse=True)
    return next((s for s in dashed if base == s or base.startswith(s + "-")), base).replace("-", "_")


def steps(tasks: dict[str, float]) -> dict[str, list[float]]:
    """Task times grouped by stage."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for name, seconds in tasks.items():
        grouped[stage_of(name)].append(seconds)
    return grouped


def print_steps(dvc_runs: list[dict[str, float]], kfp_runs: list[dict[str, float]]) -> None:
    """Like for like: kfp runs a step's tasks in one component where DVC runs a stage per task."""
    dvc, kfp = steps(dvc_runs[0]), steps(kfp_runs[0])
    print("\n| step | DVC stages | DVC s | kfp tasks | kfp s | kfp - DVC s |\n|---|---|---|---|---|---|")
    for name in dict.fromkeys((*dvc, *kfp)):
        d, k = (statistics.median(sum(steps(r).get(name, [])) for r in runs) for runs in (dvc_runs, kfp_runs))
        print(f"| {name} | {len(dvc.get(name, []))} | {d:.1f} | {len(kfp.get(name, []))} | {k:.1f} | {k - d:+.1f} |")


def chain(repeats: int, noop_repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        project = scratch_project(Path(tmp) / "project", smoke=True)
        dvc_runs, kfp_runs = [], []
        for i in range(repeats):
            dvc_runs.append(stream([DVC, "repro", *(["--force"] if i else [])], project, DVC_START))
            if i == 0:
                print_noop("the smoke scratch project", noop(project, noop_repeats))
            kfp_runs.append(stream([UNITASK, "pipeline", "run-local", "--output", f"{tmp}/kfp"], project, KFP_START))
    dvc_wall, kfp_wall = (statistics.median(wall for wall, _ in r) for r in (dvc_runs, kfp_runs))
    dvc_tasks, kfp_tasks = len(dvc_runs[0][1]), len(kfp_runs[0][1])
    print(f"\nsmoke chain, median of {repeats}\n| runner | wall s | tasks | s/task |\n|---|---|---|---|")
    print(f"| `dvc repro` | {dvc_wall:.1f} | {dvc_tasks} | {dvc_wall / dvc_tasks:.1f} |")
    print(f"| `unitask pipeline run-local` (kfp) | {kfp_wall:.1f} | {kfp_tasks} | {kfp_wall / kfp_tasks:.1f} |")
    print(f"\nkfp overhead per task: ({kfp_wall:.1f} - {dvc_wall:.1f}) / {kfp_tasks} = {(kfp_wall - dvc_wall) / kfp_tasks:.1f} s")
    print_steps([tasks for _, tasks in dvc_runs], [tasks for _, tasks in kfp_runs])
    print_tasks("DVC stage", [tasks for _, tasks in dvc_runs])
    print_tasks("kfp task", [tasks for _, tasks in kfp_runs])


def stage_order(project: Path) -> list[str]:
    """The stages in an order `dvc dag` allows (upstream first), without .dvc files."""
    needs: dict[str, set[str]] = defaultdict(set)
    for line in run([DVC, "dag", "--dot"], project)[1].splitlines():
        if names := re.findall(r'"([^"]+)"', line):
            needs[names[-1]].update(names[:-1])
    return [stage for stage in TopologicalSorter(needs).static_order() if not stage.endswith(".dvc")]


def full(dry_run: bool, here: bool, keep: Path | None) -> None:
    stages = stage_order(REPO)
    commands = [[DVC, "repro", "--force", "--single-item", stage] for stage in stages]
    if dry_run:
        where = "in the project itself" if here else f"in a scratch copy ({', '.join(COPY)}; git init; dvc init; unitask data fetch; dvc commit --force data.dvc)"
        print(f"{where}:")
        print("\n".join(" ".join(command) for command in commands))
        return
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_full_") as tmp:
        project = REPO if here else scratch_project(keep or Path(tmp), smoke=False)
        # CPU seconds (user + system of the stage's processes) hardly move with other load on the
        # machine, where wall time does; the load average says how busy the machine was
        print("\ndefault params, one run\n| stage | s | CPU s | load (1 min) |\n|---|---|---|---|", flush=True)
        total = cpu_total = 0.0
        for stage, command in zip(stages, commands):
            before = os.times()
            seconds = run(command, project)[0]
            after = os.times()
            cpu = after.children_user - before.children_user + after.children_system - before.children_system
            total, cpu_total = total + seconds, cpu_total + cpu
            print(f"| {stage} | {seconds:.1f} | {cpu:.1f} | {os.getloadavg()[0]:.1f} |", flush=True)
    print(f"| **total** | **{total:.1f}** | **{cpu_total:.1f}** | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    noop_parser = commands.add_parser("noop", help="dvc status / no-op dvc repro in an up-to-date project")
    noop_parser.add_argument("--project", type=Path, default=REPO)
    noop_parser.add_argument("--repeats", type=int, default=5)
    chain_parser = commands.add_parser("chain", help="smoke chain under DVC and under kfp's local runner")
    chain_parser.add_argument("--repeats", type=int, default=1)
    chain_parser.add_argument("--noop-repeats", type=int, default=5)
    full_parser = commands.add_parser("full", help="every default stage, one at a time (about 30 minutes)")
    full_parser.add_argument("--dry-run", action="store_true", help="print the stage order and commands only")
    full_parser.add_argument("--here", action="store_true", help="in the project itself (its dvc.lock and outputs), not a scratch copy")
    full_parser.add_argument("--keep", type=Path, help="make the scratch copy here and keep it (its models, reports, MLflow runs)")
    args = parser.parse_args()

    if args.command == "noop":
        print_noop(str(args.project), noop(args.project.resolve(), args.repeats))
    elif args.command == "chain":
        chain(args.repeats, args.noop_repeats)
    else:
        full(args.dry_run, args.here, args.keep)


if __name__ == "__main__":
    main()
