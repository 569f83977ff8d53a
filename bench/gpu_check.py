"""The measurements of bench/gpu_check.sh on a CUDA machine (run that script, not this one).

    python bench/gpu_check.py peak                      # bf16 matmul FLOP/s of GPU 0: the MFU denominator
    python bench/gpu_check.py finetune --peak F [--tasks ...] [--steps N] [--set k=v ...]
    torchrun --standalone --nproc_per_node=N bench/gpu_check.py allreduce   # NCCL bus bandwidth

Each mode prints one JSON line (and `finetune` a Markdown table): samples/s, real tokens/s and MFU of
`unitask finetune`'s trainer (bench/bench_finetune.py's `unitask` variant) in bf16 on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def gpu_matmul_peak(size: int = 8192, repeats: int = 20) -> float:
    """Median FLOP/s of a size^3 bf16 matmul on the current GPU, timed with CUDA events."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / statistics.median(times)


def finetune(args: argparse.Namespace) -> None:
    from bench_finetune import one_run

    from unitask.config import load_config

    cfg = load_config(args.params, args.overrides)
    rows = []
    for name in args.tasks:
        runs = [one_run("unitask", cfg, name, args.steps, bf16=True) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append({"task": name, "batch_size": cfg.finetune_for(name).batch_size, **med, "mfu": med["flops_per_s"] / args.peak})
    print("| task | batch | samples/s | real tokens/s | padding | TFLOP/s | MFU |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['batch_size']} | {r['samples_per_s']:.0f} | {r['tokens_per_s']:.0f} | {r['padded_share']:.0%} "
              f"| {r['flops_per_s'] / 1e12:.2f} | {r['mfu']:.1%} |")  # fmt: skip
    print(json.dumps({"finetune": rows, "peak_flops": args.peak, "device": torch.cuda.get_device_name(0)}))


def allreduce(megabytes: int = 256, repeats: int = 20) -> None:
    import torch.distributed as dist

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    x = torch.ones(megabytes * 2**20 // 2, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dist.all_reduce(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    seconds = statistics.median(times)
    bus = 2 * (world - 1) / world * x.numel() * x.element_size() / seconds  # NCCL's busbw for all_reduce
    if rank == 0:
        print(json.dumps({"allreduce": {"world_size": world, "megabytes": megabytes, "seconds": seconds, "bus_gb_per_s": bus / 1e9}}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("peak")
    ft = sub.add_parser("finetune")
    ft.add_argument("--peak", type=float, required=True, help="FLOP/s of `peak`")
    ft.add_argument("--params", default=str(REPO / "params.yaml"))
    ft.add_argument("--tasks", nargs="+", default=["trec_coarse", "bbc_topic"])
    ft.add_argument("--steps", type=int, default=30)
    ft.add_argument("--repeats", type=int, default=2)
    ft.add_argument("--set", dest="overrides", action="append", default=[])
    sub.add_parser("allreduce")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch")
    if args.mode == "peak":
        print(json.dumps({"peak_flops": gpu_matmul_peak(), "device": torch.cuda.get_device_name(0)}))
    elif args.mode == "finetune":
        finetune(args)
    else:
        allreduce()


if __name__ == "__main__":
    main()
