"""How multi-task DDP should treat the heads a step leaves unused: DDP's `find_unused_parameters`
(what `unitask multitask` uses) against a zero-contribution term (`+ 0 * sum(unused heads)`, which
lets DDP run with find_unused_parameters=False). Run under torchrun, gloo on the CPU:

    OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \
        bench/bench_multitask_ddp.py [--steps 30] [--repeats 5] [--hidden 128] [--layers 2]

Both arms train a copy of the same `MultitaskModel` (a BERT from a config, three classification
heads, one task per step in turn, AdamW with weight decay) on the same batches; blocks of `--steps`
steps alternate between the arms, `--repeats` times. Rank 0 prints the median time per step of each
arm and, as the correctness check, how far each arm moved a head in the steps that did not use it
(0 in one process: an unused head gets no gradient, and AdamW skips it).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import BertConfig, BertModel

from unitask.models.multitask import HeadSpec, MultitaskModel

TASKS = ("a", "b", "c")


def arms(hidden: int, layers: int) -> dict[str, tuple[DistributedDataParallel, torch.optim.Optimizer]]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=4 * hidden, max_position_embeddings=64)
    model = MultitaskModel(BertModel(config), {t: HeadSpec("classification", 3) for t in TASKS})
    out = {}
    for name, find_unused in (("find_unused_parameters", True), ("zero-contribution term", False)):
        ddp = DistributedDataParallel(copy.deepcopy(model), find_unused_parameters=find_unused)
        out[name] = (ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.01))
    return out


def step(name: str, ddp: DistributedDataParallel, optimizer: torch.optim.Optimizer, task: int, batch: dict) -> None:
    loss = ddp(task, **batch)["loss"]
    if name == "zero-contribution term":
        unused = [p for t, head in ddp.module.heads.items() if t != TASKS[task] for p in head.parameters()]
        loss = loss + 0.0 * sum(p.sum() for p in unused)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="rows per process")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    batches = [{"input_ids": torch.randint(1, 1000, (args.batch, 32), generator=generator),
                "labels": torch.randint(0, 3, (args.batch,), generator=generator)} for _ in range(args.steps)]
    models = arms(args.hidden, args.layers)
    times: dict[str, list[float]] = {name: [] for name in models}
    drift = dict.fromkeys(models, 0.0)
    for _ in range(args.repeats):
        for name, (ddp, optimizer) in models.items():
            dist.barrier()
            started = time.perf_counter()
            for i, batch in enumerate(batches):
                task = i % len(TASKS)
                idle = next(h for t, h in ddp.module.heads.items() if t != TASKS[task]).weight
                before = idle.detach().clone()
                step(name, ddp, optimizer, task, batch)
                drift[name] = max(drift[name], float((idle.detach() - before).abs().max()))
            dist.barrier()
            times[name].append((time.perf_counter() - started) / args.steps)
    if rank == 0:
        print(f"world {dist.get_world_size()}, hidden {args.hidden}, layers {args.layers}, {args.batch} rows x 32 tokens "
              f"per process, {args.steps} steps x {args.repeats} repeats, interleaved")
        print("| arm | median ms/step | max change of an unused head in a step |")
        print("|---|---|---|")
        for name in models:
            print(f"| {name} | {1000 * statistics.median(times[name]):.1f} | {drift[name]:.2e} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
