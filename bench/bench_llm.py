"""LoRA training throughput of `unitask llm` against TRL's SFTTrainer with PEFT at its defaults.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_llm.py \
        [--steps 8] [--repeats 2] [--eval-rows 50] [--set llm.batch_size=8 ...]

Same base model (llm.model), same train rows of llm.tasks turned into the same chat prompts and targets,
same LoRA config, batch size, learning rate, precision and number of steps; the two run interleaved
(ours, SFT, ours, SFT, ...) in one process:
- `unitask`: the stage's trainer (`make_trainer`): one task per batch, length-grouped, left-padded, the
  loss on target tokens with the vocabulary projection only over the answer positions;
- `TRL SFTTrainer`: a conversational prompt-completion dataset (the same user message and answer) with
  SFTTrainer's defaults: completion-only loss, logits over every position, random batches, right padding.
Each run times `--steps` optimizer steps after 2 warm-up steps and reports real (non-pad) tokens/s, the
peak resident memory above the run's start (a 20 ms sampler; on a GPU, torch's peak allocation), and
MFU: useful training FLOP/s over this machine's matmul peak measured in the same run. Useful FLOPs are
the same formula for both: 4·N per real token (N: the frozen non-embedding weights; forward, and backward
to the activations only) + 6·hidden·vocab per target token (the vocabulary projection the loss needs);
the LoRA matrices (<1% of N) are left out. Work a trainer does beyond that (SFT's projection over
prompt tokens) counts as waste, not as FLOPs.
After the last repeat, each variant's adapter is scored on `--eval-rows` validation rows per task with
the stage's decoder (the validation metric the goal is "equal or better" on). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_finetune import matmul_peak  # noqa: E402

from unitask.config import load_config  # noqa: E402
from unitask.llm.decode import Answerer  # noqa: E402
from unitask.llm.model import base_model_path, load_base, load_tokenizer  # noqa: E402
from unitask.llm.train import (  # noqa: E402
    IGNORE,
    eval_rows,
    limits,
    lora_config,
    lora_model,
    make_trainer,
    score_model,
    task_prompts,
)
from unitask.tasks.text import read_split, text_task  # noqa: E402
from unitask.training.trainer import use_bf16  # noqa: E402

WARMUP = 2
OURS, SFT = "unitask", "TRL SFTTrainer"


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


class TokenCount:
    """Wraps a collator; records (real tokens, target tokens) of each batch it makes."""

    def __init__(self, collate: Any) -> None:
        self.collate, self.batches = collate, []

    def __call__(self, rows: list[Any]) -> Any:
        batch = self.collate(rows)
        labels = batch["labels"]
        self.batches.append((int(batch["attention_mask"].sum()), int((labels != IGNORE).sum())))
        return batch


class PeakMemory:
    """Peak resident memory (CPU, sampled) or peak allocated CUDA memory, above the start, in GiB."""

    def __enter__(self) -> PeakMemory:
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.gib = (torch.cuda.max_memory_allocated() - self.start) / 2**30
        else:
            self.running = False
            self.thread.join()
            self.gib = (self.peak - self.start) / 2**30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def useful_flops(model: Any, tokens: int, targets: int) -> float:
    config = model.config
    embeddings = config.vocab_size * config.hidden_size
    n = sum(p.numel() for p in model.base_model.parameters() if not p.requires_grad) - embeddings * (1 if config.tie_word_embeddings else 2)
    return 4 * n * tokens + 6 * config.hidden_size * config.vocab_size * targets


def sft_dataset(prompts: dict[str, Any], trains: dict[str, Any], cut: Any, seed: int) -> Any:
    from datasets import Dataset

    rows = []
    for name, prompt in prompts.items():
        for row in trains[name].to_dict("records"):
            rows.append({"prompt": [{"role": "user", "content": prompt.user(row, cut)}],
                         "completion": [{"role": "assistant", "content": prompt.target(row)}]})
    return Dataset.from_list(rows).shuffle(seed=seed)


def one_run(variant: str, cfg: Any, base_path: str, prompts: dict[str, Any], trains: dict[str, Any], steps: int) -> tuple[dict[str, float], Any]:
    from trl import SFTConfig, SFTTrainer

    from unitask.llm.decode import cutter

    lc = cfg.llm
    tokenizer = load_tokenizer(base_path)
    torch.manual_seed(cfg.seed)
    base = load_base(base_path)
    clock = StepClock()
    bf16 = use_bf16(lc.bf16)
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as memory:
        if variant == OURS:
            model = lora_model(cfg, base, list(prompts))
            trainer, _ = make_trainer(cfg, model, tokenizer, prompts, trains, tmp, callbacks=[clock], max_steps=WARMUP + steps,
                                      save_strategy="no", logging_steps=1000, disable_tqdm=True, warmup_steps=0.0)
            counter = TokenCount(trainer.data_collator)
            trainer.data_collator = counter
        else:
            args = SFTConfig(output_dir=tmp, max_steps=WARMUP + steps, per_device_train_batch_size=lc.batch_size,
                             learning_rate=lc.learning_rate, bf16=bf16, seed=cfg.seed, report_to="none", save_strategy="no",
                             logging_steps=1000, disable_tqdm=True, use_cpu=not torch.cuda.is_available(), max_length=lc.max_length)
            trainer = SFTTrainer(
                model=base, args=args, processing_class=tokenizer, callbacks=[clock],
                train_dataset=sft_dataset(prompts, trains, cutter(tokenizer, lc.max_input_tokens), cfg.seed),
                peft_config=lora_config(cfg, base),
            )
            counter = TokenCount(trainer.data_collator)
            trainer.data_collator = counter
        trainer.train()
    seconds = clock.ends[-1] - clock.ends[WARMUP - 1]
    timed = counter.batches[WARMUP : WARMUP + steps]
    tokens, targets = sum(b[0] for b in timed), sum(b[1] for b in timed)
    return {"tokens_per_s": tokens / seconds, "seconds_per_step": seconds / steps, "peak_gib": memory.gib,
            "flops_per_s": useful_flops(trainer.model, tokens, targets) / seconds}, trainer.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant")
    parser.add_argument("--eval-rows", type=int, default=50, help="validation rows per task scored after the last runs")
    args = parser.parse_args()
    cfg = load_config(args.params, args.overrides)
    prompts = task_prompts(cfg)
    base_path = base_model_path(cfg)
    trains = {n: read_split(cfg, n, "train") for n in prompts}
    bf16 = use_bf16(cfg.llm.bf16)
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    results: dict[str, list[dict[str, float]]] = {OURS: [], SFT: []}
    models: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for variant in (OURS, SFT):
            row, model = one_run(variant, cfg, base_path, prompts, trains, args.steps)
            results[variant].append(row)
            print(f"{variant} run {repeat + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
            models[variant] = model
            gc.collect()
    tokenizer = load_tokenizer(base_path)
    frames = {}
    for name in prompts:
        frames[name] = {s: eval_rows(cfg, name, s).head(args.eval_rows) for s in ("validation",)}
        frames[name]["gold"] = {"validation": text_task(cfg, name).gold(frames[name]["validation"])}
    scores = {v: score_model(Answerer(m, tokenizer, limits(cfg)), prompts, frames, splits=("validation",))["validation"]
              for v, m in models.items()}
    med = {v: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for v, rows in results.items()}
    print(f"\nmatmul peak ({'bf16' if bf16 else 'fp32'}): {peak / 1e9:.1f} GFLOP/s; tasks {', '.join(prompts)}; "
          f"batch {cfg.llm.batch_size}, {args.steps} timed steps x {args.repeats} runs; load {os.getloadavg()[0]:.1f}\n")
    print("| trainer | tokens/s | s/step | peak memory (GiB) | MFU | " + " | ".join(f"val {n}" for n in prompts) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(prompts))
    for v, m in med.items():
        cells = " | ".join(f"{scores[v][n][_main(scores[v][n])]:.3f}" for n in prompts)
        print(f"| {v} | {m['tokens_per_s']:.0f} | {m['seconds_per_step']:.2f} | {m['peak_gib']:.2f} | "
              f"{m['flops_per_s'] / peak:.1%} | {cells} |")
    print(f"\nspeed-up (tokens/s): {med[OURS]['tokens_per_s'] / med[SFT]['tokens_per_s']:.2f}x")


def _main(metrics: dict[str, float]) -> str:
    return "macro_f1" if "macro_f1" in metrics else "pearson" if "pearson" in metrics else "f1"


if __name__ == "__main__":
    main()
