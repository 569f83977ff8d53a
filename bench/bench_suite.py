"""The test suite's wall time, as `make test` runs it, with a per-file table for BENCHMARKS.md.

    python bench/bench_suite.py --workers 2 --avx2-only        # what an AVX2-only CPU without bf16 runs
    python bench/bench_suite.py --workers 0                    # one test after another, this CPU's kernels

`--avx2-only` puts bench/avx2_only first on PYTHONPATH for every process the suite starts: torch's
kernels, oneDNN and MKL stay at AVX2 and torch reports no bf16, so `bf16: auto` trains in fp32. It
cannot make this CPU's cores slower: the table says which CPU ran it and how busy the machine was.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(next(line for line in lines if line.startswith("flags")).split())
    model = next(line for line in lines if line.startswith("model name"))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model.split(':', 1)[1].strip()}, {os.cpu_count()} cores, flags {' '.join(shown)}"


def per_file(junit: Path) -> list[tuple[str, float, int]]:
    seconds: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("classname", "").rsplit(".", 1)[-1]
        seconds[name] += float(case.get("time", 0))
        count[name] += 1
    return [(name, s, count[name]) for name, s in seconds.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers; 0: in one process (default: 2)")
    parser.add_argument("--avx2-only", action="store_true", help="AVX2 kernels and no bf16, as on a CPU without AVX512")
    parser.add_argument("--junit", type=Path, default=Path("/tmp/unitask-suite.xml"), help="pytest's per-test times")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (a file, -k ...)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.avx2_only:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "bench" / "avx2_only"), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-q", "-n", str(args.workers), "--dist", "loadfile",
               f"--junitxml={args.junit}", *args.pytest_args]  # fmt: skip
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, check=False)
    wall = time.perf_counter() - started
    print(f"\n{cpu_flags()}; {'AVX2-only emulated' if args.avx2_only else 'native kernels'}; "
          f"workers {args.workers}; load before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"suite wall time {wall:.0f} s ({wall / 60:.1f} min), pytest exit {done.returncode}\n")
    print("| test file | tests | seconds (sum of its tests) |\n|---|---:|---:|")
    for name, seconds, count in per_file(args.junit):
        print(f"| {name} | {count} | {seconds:.1f} |")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
