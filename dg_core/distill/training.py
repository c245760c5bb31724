"""The training options every training stage shares (`train` and `distill`), declared once.

TRL-style: :class:`TrainingConfig` holds what any run of :func:`dg_core.distill.trainer.train` needs (steps,
batch, learning rate, accumulation, checkpoints, ...); a stage Config inherits it and adds only its own fields,
and a method config (``dg_core.distill.methods.<name>``) adds only the method's. Where a stage wants another
default (``train`` bootstraps models over 1000 steps) it says so with :func:`default`, which keeps the field's
help text and bounds: a stage can change a default but cannot restate or contradict the documentation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dg_core.checkpoint import resume_option
from dg_core.config import StageConfig, option

CHECKPOINTING = ("auto", "on", "off")


@dataclass
class TrainingConfig(StageConfig):
    """Optimisation and checkpointing of one training run (AdamW, linear warmup then cosine decay)."""

    steps: int = option(300, "Optimizer steps (in distill, the attack budget).", ge=1)
    batch_size: int = option(
        32, "Sequences per micro-batch on each process (the global batch is batch_size x processes).", ge=1
    )
    grad_accum: int = option(1, "Micro-batches per optimizer step.", ge=1)
    lr: float = option(2e-3, "Peak learning rate (AdamW).", gt=0)
    warmup_steps: int = option(20, "Linear warmup steps before cosine decay.", ge=0)
    max_grad_norm: float = option(1.0, "Gradient clipping (0 disables).", ge=0)
    max_length: int = option(256, "Longest prompt+response in tokens (responses are truncated).", ge=2)
    gradient_checkpointing: str = option(
        "auto",
        "Recompute student activations in backward: on, off, or auto (on for models of 20M+ parameters).",
        choices=CHECKPOINTING,
    )
    lora: bool = option(False, "Train a LoRA adapter (merged on save) instead of every weight.")
    lora_r: int = option(8, "LoRA rank.", ge=1)
    reinit: bool = option(False, "Re-initialise the weights from `seed` before training (random-init probes).")
    seed: int = option(0, "Seed: data order, dropout, re-initialisation.")
    checkpoint_every: int = option(100, "Checkpoint every N steps (0 disables).", ge=0)
    resume: str = resume_option()
    device: str = option("auto", "auto, cpu or cuda.")

    @property
    def lora_alpha(self) -> int:
        return 2 * self.lora_r


# Trainer constants no stage exposes (one place, so `train` and `distill` cannot drift apart).
WEIGHT_DECAY = 0.0
MIN_LR_RATIO = 0.1
LOG_EVERY = 10


def default(name: str, value: Any) -> Any:
    """Field ``name`` of :class:`TrainingConfig` with another default; help and bounds stay the declared ones."""
    f = {x.name: x for x in dataclasses.fields(TrainingConfig)}[name]
    return dataclasses.field(default=value, metadata=f.metadata)


def training_part(cfg: Any) -> TrainingConfig:
    """The :class:`TrainingConfig` fields of a stage config (tests and benches build it directly)."""
    if type(cfg) is TrainingConfig:
        return cfg
    names = [f.name for f in dataclasses.fields(TrainingConfig)]
    return TrainingConfig(**{n: getattr(cfg, n) for n in names})
