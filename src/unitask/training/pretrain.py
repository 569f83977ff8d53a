"""`unitask pretrain`: continued pretraining of the encoder on unlabeled text, on transformers' Trainer.

The corpus is, by default, the train split of every declared task (task-adaptive pretraining):
validation and test text never enter it. `pretrain.corpus` names a separate corpus instead. A seeded
share of the corpus is held out, masked once, and scored before and after training (perplexity =
exp(mean held-out loss)). The encoder, without its LM head, is saved as safetensors with its
tokenizer to `pretrain.output`; fine-tuning starts from there (`encoder_path`).

Under `torchrun --nproc_per_node=N` every process trains (DDP) on its share of each global batch
(`pretrain.batch_size` rows per process), the loss is the mean over the global batch's tokens, and
only rank 0 writes.
"""

from __future__ import annotations

import functools
import gzip
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from unitask.atomic import atomic_dir, write_json
from unitask.config import Config, Corpus, PackageSource
from unitask.config.task_types import TEXT_ROLES
from unitask.data.hashing import verify_sha256
from unitask.data.readers import READERS
from unitask.data.sources import package_path
from unitask.errors import ConfigError, DataError, UnitaskError
from unitask.models import MANIFEST
from unitask.models.backbone import backbone_path, load_tokenizer
from unitask.tasks.text import read_split
from unitask.tracking import log_trained_model, preflight
from unitask.training.model import check_weights
from unitask.training.skeleton import Trained, TrainingRun, run_training
from unitask.training.trainer import (
    MlflowMetrics,
    UnitaskTrainer,
    is_main_process,
    trainer_arguments,
)

MIN_TEXTS = 2  # one to train on, one to hold out


def pretrain(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Pretrain the encoder named by `model`; return (and write to `pretrain.metrics`) the metrics.
    With `pretrain.enabled` false nothing is trained (see `skip`)."""
    if not cfg.pretrain.enabled:
        return skip(cfg)
    preflight(cfg)  # an unreachable tracking server fails the stage before any work
    from transformers import set_seed

    p = cfg.pretrain
    started = time.monotonic()
    texts, origin = gather_corpus(cfg)
    train_texts, heldout_texts = split_heldout(texts, p.heldout_fraction, cfg.seed)
    set_seed(cfg.seed)
    tokenizer = _tokenizer(cfg)
    model = load_lm(cfg, tokenizer)
    max_length = _check_max_length(cfg, model.config, tokenizer)
    train_set = _tokenize(tokenizer, train_texts, max_length)
    heldout_set = _masked_once(cfg, tokenizer, _tokenize(tokenizer, heldout_texts, max_length))
    checkpoints = cfg.path(p.checkpoints)
    trainer = UnitaskTrainer(  # its epoch-seeded, length-grouped batches: the same examples per step for N processes
        model=model,  # as for one, and the same batches after a resume
        args=_training_args(cfg, checkpoints),
        # masks seeded by their rows (EpochMaskSeeds): fresh each epoch, the same after a resume, and
        # different on each process, whose rows differ
        data_collator=_Collator(tokenizer, p.objective, p.mlm_probability, cfg.seed),
        train_dataset=EpochMaskSeeds(train_set, cfg.seed),
        eval_dataset=heldout_set,
        processing_class=tokenizer,
        callbacks=[MlflowMetrics()],
    )
    params = {
        **{f"pretrain.{k}": v for k, v in p.model_dump(exclude={"corpus"}).items()},
        "pretrain.corpus": origin,
        "model.backbone": cfg.model.backbone,
        "model.backbone_config": cfg.model.backbone_config,
        "model.max_length": max_length,
    }
    corpus = {"source": origin, "train_texts": len(train_texts), "heldout_texts": len(heldout_texts),
              "train_tokens": sum(len(ids) for ids in train_set["input_ids"])}  # fmt: skip
    tasks = (p.tasks or list(cfg.tasks)) if p.corpus is None else []  # the train splits of the tasks (gather_corpus)
    run = TrainingRun("pretrain", trainer, checkpoints, params, datasets=tasks, splits=("train",))
    return run_training(cfg, run, resume, functools.partial(_finish, cfg, tokenizer, corpus, started))


def _finish(cfg: Config, tokenizer: Any, corpus: dict[str, Any], started: float, trained: Trained) -> dict[str, Any]:
    """Held-out loss before and after (every process); the encoder and the metrics written (the main one)."""
    import mlflow

    trainer = trained.trainer
    before = _initial_loss(trainer.state.log_history)
    after = trainer.evaluate(metric_key_prefix="heldout_after")["heldout_after_loss"]
    metrics = {
        "objective": cfg.pretrain.objective,
        "corpus": corpus,
        "heldout": {
            "loss_before": before,
            "loss_after": after,
            "perplexity_before": _perplexity(before),
            "perplexity_after": _perplexity(after),
        },
        "train_loss": trained.result.training_loss,
        "steps": trained.result.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "seconds": round(time.monotonic() - started, 1),  # the whole stage: gathering and tokenizing the corpus too
    }
    if trained.main:
        save_encoder(cfg, trainer.model, tokenizer)
        metrics_file = cfg.path(cfg.pretrain.metrics)
        write_json(metrics_file, metrics)
        mlflow.log_metrics({f"pretrain.{k}": v for k, v in metrics["heldout"].items()})
        mlflow.log_artifact(str(metrics_file))
        log_trained_model("pretrain", cfg.path(cfg.pretrain.output), {"validation": {"heldout": metrics["heldout"]}})
    return metrics


def skip(cfg: Config) -> dict[str, Any]:
    """Pretraining is off: leave a note where the encoder would go (the DVC stage's output must
    exist) and metrics that say so, so that a pipeline with pretraining off does no training here."""
    note = {"enabled": False, "encoder": cfg.model.backbone}
    if is_main_process():
        with atomic_dir(cfg.path(cfg.pretrain.output)) as tmp:
            write_json(tmp / MANIFEST, note)  # what pretrain.output holds when pretraining is off
        write_json(cfg.path(cfg.pretrain.metrics), note)
    print("unitask: pretrain.enabled is false: nothing to train; fine-tuning starts from model.backbone", file=sys.stderr)
    return note


# ---- corpus ----------------------------------------------------------------------------------


def gather_corpus(cfg: Config) -> tuple[list[str], str]:
    """The unlabeled texts (deduplicated, capped by `pretrain.max_texts`) and where they come from."""
    p = cfg.pretrain
    if p.corpus is not None:
        texts = {"corpus": read_corpus(cfg, p.corpus)}
        origin = _describe_corpus(p.corpus)
    else:
        names = p.tasks or list(cfg.tasks)
        texts = {name: task_train_texts(cfg, name) for name in names}
        origin = "train split of " + ", ".join(names)
    texts = {name: list(dict.fromkeys(part)) for name, part in texts.items()}
    if p.max_texts is not None:
        texts = _sample(texts, p.max_texts, cfg.seed)
    corpus = list(dict.fromkeys(t for part in texts.values() for t in part))
    if len(corpus) < MIN_TEXTS:
        raise DataError(
            f"pretrain: the corpus ({origin}) has {len(corpus)} non-empty texts; at least {MIN_TEXTS} are needed",
            hint="declare tasks with text (run `unitask prepare` first) or point pretrain.corpus at a text file",
        )
    return corpus, origin


def task_train_texts(cfg: Config, name: str) -> list[str]:
    """Every non-empty text of task `name`'s train split: one text per text role, tokens joined."""
    roles = [r for r in cfg.tasks[name].columns if r in TEXT_ROLES or r == "tokens"]
    table = read_split(cfg, name, "train")
    texts = []
    for role in roles:
        values = table[role].map(" ".join) if role == "tokens" else table[role]
        texts.extend(str(v).strip() for v in values if v is not None)
    return [t for t in texts if t]


def read_corpus(cfg: Config, corpus: Corpus) -> list[str]:
    """The non-empty texts of a declared corpus file, checked against its sha256 when one is given."""
    src = corpus.source
    path = package_path(src, "pretrain.corpus") if isinstance(src, PackageSource) else cfg.path(src.path)
    if not path.is_file():
        raise ConfigError(f"pretrain.corpus.source.path: '{path}' is not a file", hint="fix the path")
    if src.sha256:
        verify_sha256(path, src.sha256, "pretrain.corpus.source", str(path))
    if corpus.read is None:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            return [line.strip() for line in fh if line.strip()]
    table = READERS[corpus.read.format](path, corpus.read)
    if corpus.column not in table.columns:
        raise ConfigError(
            f"pretrain.corpus.column: no column '{corpus.column}' in {path}",
            hint=f"pick one of {list(table.columns)}",
        )
    return [t for t in (str(v).strip() for v in table[corpus.column].dropna()) if t]


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split into (train, held-out); both keep at least one text."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_heldout = min(max(1, round(len(texts) * fraction)), len(texts) - 1)
    heldout = set(order[:n_heldout])
    return [t for i, t in enumerate(texts) if i not in heldout], [t for i, t in enumerate(texts) if i in heldout]


def _sample(texts: dict[str, list[str]], cap: int, seed: int) -> dict[str, list[str]]:
    """At most `cap` texts in all, an even share per source; a small source leaves its rest to the others."""
    quota: dict[str, int] = {}
    left, budget = sorted(texts, key=lambda n: len(texts[n])), cap
    while left:
        share, extra = divmod(budget, len(left))
        name = left.pop(0)
        quota[name] = min(len(texts[name]), share + (1 if extra else 0))
        budget -= quota[name]
    rng = random.Random(seed)
    return {n: [texts[n][i] for i in sorted(rng.sample(range(len(texts[n])), quota[n]))] for n in texts}


def _describe_corpus(corpus: Corpus) -> str:
    src = corpus.source
    return f"{src.package}:{src.path}" if isinstance(src, PackageSource) else src.path


# ---- model -----------------------------------------------------------------------------------


def _tokenizer(cfg: Config):
    try:
        tokenizer = load_tokenizer(cfg)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.backbone: cannot load a tokenizer from '{cfg.model.backbone}': {exc}",
            hint="point model.backbone at a hub id or a folder with the tokenizer files",
        ) from None
    if cfg.pretrain.objective == "mlm" and tokenizer.mask_token is None:
        raise ConfigError(
            "pretrain.objective: 'mlm' needs a tokenizer with a mask token; this one has none",
            hint="use objective clm for a decoder, or a masked-LM tokenizer",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2-style tokenizers have no pad token
    return tokenizer


def load_lm(cfg: Config, tokenizer):
    """The backbone with a language-model head for `pretrain.objective` (a fresh head if it has none)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if cfg.pretrain.objective == "mlm" else AutoModelForCausalLM
    try:
        if cfg.model.backbone_config is not None:
            spec = dict(cfg.model.backbone_config)
            if "model_type" not in spec:
                raise ConfigError("model.backbone_config: needs model_type", hint="e.g. {model_type: bert, hidden_size: 32, ...}")
            spec.setdefault("vocab_size", len(tokenizer))
            for special in ("pad", "bos", "eos"):  # the tokenizer's, not the config class defaults
                spec.setdefault(f"{special}_token_id", getattr(tokenizer, f"{special}_token_id"))
            if spec["vocab_size"] < len(tokenizer):
                raise ConfigError(
                    f"model.backbone_config.vocab_size: {spec['vocab_size']} is below the tokenizer's "
                    f"{len(tokenizer)} tokens",
                    hint="leave vocab_size out (it defaults to the tokenizer's size)",
                )
            return auto.from_config(AutoConfig.for_model(**spec), attn_implementation=cfg.model.attn_implementation)
        source = backbone_path(cfg)
        check_weights(source)
        return auto.from_pretrained(
            source, trust_remote_code=cfg.model.trust_remote_code, use_safetensors=True,
            attn_implementation=cfg.model.attn_implementation,
        )
    except (OSError, ValueError, TypeError) as exc:
        head = "masked-LM" if cfg.pretrain.objective == "mlm" else "causal-LM"
        if "Unrecognized configuration class" in str(exc):
            name = (cfg.model.backbone_config or {}).get("model_type") or cfg.model.backbone
            raise ConfigError(
                f"pretrain.objective: the model type of '{name}' has no {head} head",
                hint="use objective mlm for encoders (BERT-style), clm for decoders (GPT-2-style)",
            ) from None
        raise ConfigError(
            f"model: cannot build a {head} model from '{cfg.model.backbone}': {exc}",
            hint="model.backbone needs config.json and weights (model.safetensors)",
        ) from None


def _check_max_length(cfg: Config, config, tokenizer) -> int:
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    limit = min(n for n in limits if isinstance(n, int) and n > 0)
    if cfg.model.max_length > limit:
        raise ConfigError(
            f"model.max_length: {cfg.model.max_length} tokens is beyond the model's maximum of {limit}",
            hint=f"set model.max_length to at most {limit}",
        )
    return cfg.model.max_length


def save_encoder(cfg: Config, lm, tokenizer) -> Path:
    """Save the encoder without its LM head (safetensors) and the tokenizer, atomically.

    Parts the LM model lacks (BERT's pooler) come from the backbone, so that the saved encoder is the
    backbone with pretrained weights and `AutoModel`/`AutoModelFor*` load it whole.
    """
    from transformers import AutoModel

    if cfg.model.backbone_config is None:
        encoder = AutoModel.from_pretrained(
            backbone_path(cfg), trust_remote_code=cfg.model.trust_remote_code, use_safetensors=True
        )
    else:
        encoder = AutoModel.from_config(lm.config)
    missing, unexpected = encoder.load_state_dict(lm.base_model.state_dict(), strict=False)
    if unexpected or len(missing) == len(encoder.state_dict()):
        raise UnitaskError(f"pretrain: the LM's base model does not fit {type(encoder).__name__}: {unexpected or missing}")
    output = cfg.path(cfg.pretrain.output)
    with atomic_dir(output) as tmp:
        encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return output


# ---- data and training -----------------------------------------------------------------------


def _tokenize(tokenizer, texts: list[str], max_length: int):
    from datasets import Dataset

    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})


def _masked_once(cfg: Config, tokenizer, dataset):
    """Held-out examples with their labels fixed once (seeded masks), so before and after compare."""
    from datasets import Dataset

    collate = _lm_collator(tokenizer, cfg.pretrain.objective, cfg.pretrain.mlm_probability, cfg.seed)
    rows = [collate([example]) for example in dataset]
    return Dataset.from_dict({key: [row[key][0].tolist() for row in rows] for key in ("input_ids", "attention_mask", "labels")})


def _lm_collator(tokenizer, objective: str, mlm_probability: float, seed: int):
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(
        tokenizer, mlm=objective == "mlm", mlm_probability=mlm_probability, seed=seed
    )


class EpochMaskSeeds:
    """Training rows, each with a masking seed drawn from (seed, epoch, row): masks are fresh every
    epoch and the same after a mid-epoch resume (a collator's own generator restarts from its seed,
    and Trainer restores the global RNG only after the first resumed batch is collated).
    `set_epoch` is called by `UnitaskTrainer`'s sampler."""

    def __init__(self, rows: Any, seed: int) -> None:
        self.rows, self.seed, self.epoch = rows, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.rows[index], MASK_SEED: ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63}


MASK_SEED = "mask_seed"


class _Collator:
    """Masks training batches afresh, seeded by their rows' `MASK_SEED`s; pads held-out batches,
    whose labels are already fixed."""

    def __init__(self, tokenizer, objective: str, mlm_probability: float, seed: int) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.train = _lm_collator(tokenizer, objective, mlm_probability, seed)
        self.heldout = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if "labels" in features[0]:
            return self.heldout(features)
        self.train.seed = sum(f[MASK_SEED] for f in features) % 2**63
        self.train.generator = None  # made again from `seed` by the collator
        return self.train([{k: v for k, v in f.items() if k != MASK_SEED} for f in features])


def _training_args(cfg: Config, checkpoints: Path):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(checkpoints),
        **{
            **trainer_arguments(cfg.pretrain, cfg.seed),
            # the LM loss is a mean over the labelled tokens: of the global batch, not of each process's
            # share (the LM heads take Trainer's `num_items_in_batch`)
            "average_tokens_across_devices": True,
        },
        eval_strategy="no",
        eval_on_start=True,  # the held-out loss before training (see `_initial_loss`)
        save_strategy="steps",
        save_steps=cfg.pretrain.save_steps,
        save_total_limit=1,
        prediction_loss_only=True,
        remove_unused_columns=False,  # the collator reads, and drops, each row's MASK_SEED
    )


def _initial_loss(log_history: list[dict[str, Any]]) -> float:
    """The held-out loss of the model before training. Trainer scores it at step 0 inside train()
    (`eval_on_start`), once DDP has wrapped the model: a Trainer.evaluate before train() marks the
    model prepared, so that train() leaves it unwrapped and every process trains alone. A resumed
    run finds the step-0 score in the checkpoint's log history."""
    return next(h["eval_loss"] for h in log_history if "eval_loss" in h and h["step"] == 0)


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
