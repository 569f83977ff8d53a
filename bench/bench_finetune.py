"""Fine-tuning throughput and model FLOP utilization (MFU) on the default real tasks.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_finetune.py \
        [--tasks trec_coarse sms_spam bbc_topic] [--steps 20] [--repeats 3] [--bf16 auto|true|false] \
        [--variants ...] [--profile] [--set model.backbone_config=...]

Three ways to train the same model (the pretrained encoder, or model.backbone) on the same prepared
train split with the same batch size, learning rate and precision, measured side by side and
interleaved (A, B, C, A, B, C, ...):
- `unitask`: what `unitask finetune` runs (UnitaskTrainer: dynamic padding + length-grouped batches);
- `run_glue padded`: a plain transformers Trainer as in `run_glue.py`'s default, every example
  padded to model.max_length (128) and random batches;
- `run_glue dynamic`: the same plain Trainer with DataCollatorWithPadding (`--pad_to_max_length False`);
- ablations, with `--variants`: `unitask without dropout`, `unitask compiled` (torch.compile),
  `unitask sdpa attention` (transformers' default, not the model.attn_implementation default eager) and
  `unitask unfused AdamW` (not adamw_torch_fused). The run_glue variants use transformers' default
  attention (sdpa), as run_glue.py does.
Each run times `--steps` optimizer steps after 3 warm-up steps, from one step's end to the next (data
loading and collation included, evaluation excluded), and reports samples/s, real (non-pad) tokens/s
and MFU: achieved training FLOP/s (6·N·tokens + 12·layers·tokens·seq·hidden for attention, over the
padded tokens the model computes; N = non-embedding parameters) divided by this machine's measured
matmul peak in the same precision. Prints a Markdown table of medians.
`--profile` instead runs torch.profiler over the timed steps of one `unitask` run per task and prints
where the self CPU time goes (matmuls, dropout, casts, optimizer, ...) per step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from unitask.config import load_config
from unitask.models.backbone import load_tokenizer
from unitask.tasks.text import read_split, text_task
from unitask.training.finetune import training_arguments
from unitask.training.model import build_model
from unitask.training.trainer import UnitaskTrainer, use_bf16

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3
VARIANTS = ["unitask", "run_glue padded", "run_glue dynamic"]
# ablations of the unitask variant: what dropout's random masks cost (no dropout anywhere; not a way to
# train), torch.compile (inductor; TrainingArguments.torch_compile), and two of the defaults undone:
# transformers' default `sdpa` attention instead of model.attn_implementation's eager, and torch's plain
# AdamW (`adamw_torch`: on CPU tensors, its per-parameter loop) instead of the fused one (`adamw_torch_fused`)
NO_DROPOUT, COMPILED = "unitask without dropout", "unitask compiled"
SDPA, LOOP_ADAMW = "unitask sdpa attention", "unitask unfused AdamW"
ABLATIONS = (NO_DROPOUT, COMPILED, SDPA, LOOP_ADAMW)


class StepClock(TrainerCallback):
    """Wall time between consecutive optimizer-step ends, and the batch shapes trained on."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


class ProfileWindow(TrainerCallback):
    """Runs torch.profiler over the timed steps (after the warm-up ones); keeps the model's config."""

    def __init__(self) -> None:
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.model_config: Any = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == WARMUP:
            self.profiler.start()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.profiler.stop()
        self.model_config = kwargs["model"].config


# Where self CPU time goes: an op inside an `Optimizer.` scope is the optimizer's; any other op goes
# to the first category whose pattern its name contains. Matmuls are the FLOPs MFU counts.
OPTIMIZER, OTHER = "optimizer step and zero_grad", "other (autograd bookkeeping, loss, data loading, Python)"
CATEGORIES = [
    ("matmuls (linear, attention bmm)", ("mm", "matmul", "linear", "mkldnn", "onednn")),
    ("attention softmax and masking", ("softmax", "scaled_dot_product", "masked_fill", "where")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("dropout", ("dropout", "bernoulli")),
    ("bf16 casts and copies", ("aten::to", "_to_copy", "copy_", "clone", "contiguous")),
    ("embeddings (forward and dense backward)", ("embedding",)),
    ("gradient accumulation and clipping", ("add_", "norm", "clip", "mul_", "div_", "foreach")),
]


def profile_breakdown(profiler: Any) -> list[tuple[str, float]]:
    """Seconds of self CPU time per category, largest first, from the profiler's event tree."""
    totals: dict[str, float] = {}
    for event in profiler.events():
        scope, in_optimizer = event, False
        while scope is not None and not in_optimizer:
            in_optimizer = "Optimizer." in scope.name
            scope = scope.cpu_parent
        label = OPTIMIZER if in_optimizer else next(
            (c for c, patterns in CATEGORIES if any(p in event.name for p in patterns)), OTHER
        )
        totals[label] = totals.get(label, 0.0) + event.self_cpu_time_total / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])


class ShapeRecorder:
    """Wraps a collator: records each batch's padded and real token counts."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.batches: list[tuple[int, int, int]] = []  # (examples, padded tokens, real tokens)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(features)
        mask = batch["attention_mask"]
        self.batches.append((mask.shape[0], mask.numel(), int(mask.sum())))
        return batch


def matmul_peak(dtype: torch.dtype, shape: tuple[int, int, int] = (2048, 2048, 2048), repeats: int = 10) -> float:
    """Median FLOP/s of an m x k by k x n matmul (`shape`) in `dtype` on this machine's torch threads."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times)


def model_flops(model: Any, padded_tokens: int, seq: float) -> float:
    """Training FLOPs: 6·N per token (forward + backward) plus attention scores and values."""
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    n = sum(p.numel() for p in model.parameters()) - embeddings
    cfg = model.config
    return 6 * n * padded_tokens + 12 * cfg.num_hidden_layers * padded_tokens * seq * cfg.hidden_size


def one_run(
    variant: str, cfg: Any, name: str, steps: int, bf16: bool, profile: ProfileWindow | None = None
) -> dict[str, float]:
    task = text_task(cfg, name)
    tokenizer = load_tokenizer(cfg)
    frame = read_split(cfg, name, "train")
    model = build_model(cfg, task, dropout=0.0 if variant == NO_DROPOUT else cfg.finetune_for(name).dropout)
    if variant == SDPA or variant.startswith("run_glue"):
        model.set_attn_implementation("sdpa")
    with tempfile.TemporaryDirectory() as tmp:
        common = {"max_steps": WARMUP + steps, "bf16": bf16, "save_strategy": "no", "eval_strategy": "no", "torch_compile": variant == COMPILED}
        if variant == LOOP_ADAMW:
            common["optim"] = "adamw_torch"
        if variant in ("unitask", *ABLATIONS):
            features = task.encode(frame, tokenizer, cfg.model.max_length)
            args = training_arguments(cfg.finetune_for(task.name), cfg.seed, task, Path(tmp))
            args = TrainingArguments(**{**args.to_dict(), **common, "load_best_model_at_end": False, "output_dir": tmp})
            collate = ShapeRecorder(task.collator(tokenizer))
            trainer_class: Any = UnitaskTrainer
        else:
            padded = variant == "run_glue padded"
            encoded = tokenizer(
                frame["text"].astype(str).tolist(),
                padding="max_length" if padded else False,
                truncation=True,
                max_length=cfg.model.max_length,
            )
            from datasets import Dataset

            features = Dataset.from_dict({**encoded, "labels": task.targets(frame)})
            ft = cfg.finetune
            args = TrainingArguments(
                output_dir=tmp,
                per_device_train_batch_size=ft.batch_size,
                learning_rate=ft.learning_rate,
                seed=cfg.seed,
                report_to="none",
                use_cpu=not torch.cuda.is_available(),
                **common,
            )
            collate = ShapeRecorder(default_data_collator if padded else DataCollatorWithPadding(tokenizer))
            trainer_class = Trainer
        clock = StepClock()
        callbacks = [clock] + ([profile] if profile else [])
        trainer = trainer_class(model=model, args=args, train_dataset=features, data_collator=collate, callbacks=callbacks)
        trainer.train()
    seconds = clock.ends[-1] - clock.ends[WARMUP - 1]
    # batches are collated one ahead of the step that uses them: count the timed steps' batches
    timed = collate.batches[WARMUP : WARMUP + steps]
    examples, padded_tokens, real_tokens = (sum(b[i] for b in timed) for i in range(3))
    seq = padded_tokens / examples
    return {
        "samples_per_s": examples / seconds,
        "tokens_per_s": real_tokens / seconds,
        "padded_share": 1 - real_tokens / padded_tokens,
        "flops_per_s": model_flops(model, padded_tokens, seq) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--tasks", nargs="+", default=["trec_coarse", "sms_spam", "bbc_topic"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--profile", action="store_true", help="profile the unitask variant once per task instead")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=[*VARIANTS, *ABLATIONS])
    args = parser.parse_args()
    cfg = load_config(args.params, args.overrides)
    bf16 = use_bf16(args.bf16 if args.bf16 == "auto" else args.bf16 == "true")
    if args.profile:
        for name in args.tasks:
            window = ProfileWindow()
            one_run("unitask", cfg, name, args.steps, bf16, window)
            breakdown = profile_breakdown(window.profiler)
            total = sum(s for _, s in breakdown)
            print(f"\n{name} ({'bf16' if bf16 else 'fp32'}), self CPU time over {args.steps} steps: {total:.2f} s")
            print("| where | ms/step | share |\n|---|---|---|")
            for label, seconds in breakdown:
                print(f"| {label} | {1000 * seconds / args.steps:.1f} | {seconds / total:.0%} |")
        dtype = torch.bfloat16 if bf16 else torch.float32
        hidden, inner = window.model_config.hidden_size, window.model_config.intermediate_size
        print(f"\nthe model's matmuls at 32 x 128 tokens, against the square peak ({dtype})\n| m x k x n | GFLOP/s |\n|---|---|")
        for shape in [(2048, 2048, 2048), (4096, hidden, hidden), (4096, hidden, inner), (4096, inner, hidden), (hidden, 4096, inner)]:
            print(f"| {' x '.join(map(str, shape))} | {matmul_peak(dtype, shape=shape) / 1e9:.0f} |")
        return
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    variants = args.variants
    print(f"matmul peak ({'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s")
    print("| task | variant | samples/s | real tokens/s | padding | MFU | vs run_glue padded | vs run_glue dynamic |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tasks:
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant in variants:
                runs[variant].append(one_run(variant, cfg, name, args.steps, bf16))
        med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
        for v in variants:
            m = med[v]
            ratios = [f"{m['samples_per_s'] / med[b]['samples_per_s']:.2f}x" if b in med else "-" for b in VARIANTS[1:]]
            print(
                f"| {name} | {v} | {m['samples_per_s']:.1f} | {m['tokens_per_s']:.0f} | {m['padded_share']:.0%} "
                f"| {m['flops_per_s'] / peak:.0%} | {ratios[0]} | {ratios[1]} |"
            )


if __name__ == "__main__":
    main()
