"""What every attack method shares: the micro-batch type, the divergence options, row selection and prompts.

A method module (``sft``, ``kd``, ``gkd``, ``xtok``) declares its ``Config`` (only its own fields, on top of
:class:`DivergenceConfig` where it matches distributions) and a :class:`Method` subclass with its batch
construction (``batch``) and its loss (``loss``). The losses themselves come from ``dg_core.base.kl`` and
``dg_core.distill.losses``; nothing here re-derives them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from dg_core.base.generate import TokenBatch, encode_prompt
from dg_core.base.kl import KINDS
from dg_core.config import StageConfig, option
from dg_core.distill.signals import SignalRow, Signals
from dg_core.distill.trainer import LossOut, row_indices
from dg_core.distill.training import TrainingConfig
from dg_core.errors import DGError

log = logging.getLogger(__name__)


@dataclass
class DivergenceConfig(StageConfig):
    """How a student's distribution is matched to the teacher's (kd, gkd, xtok)."""

    kind: str = option("", "Divergence for kd/gkd/xtok-align (default: reverse for gkd, forward otherwise).")
    temperature: float = option(1.0, "Distillation temperature (divergences are scaled by T^2).", gt=0)
    beta: float = option(0.5, "JSD beta (0 = forward KL, 1 = reverse KL).", ge=0, le=1)
    alpha: float = option(0.1, "Skew KL alpha.", ge=0, lt=1)
    ce_weight: float = option(0.0, "Extra cross-entropy on the trained sequences (kd/gkd/xtok).", ge=0)

    def check(self) -> None:
        if self.kind and self.kind not in KINDS:
            raise DGError(f"config field 'kind': got {self.kind!r}, expected one of {list(KINDS)}")


def config_of(cls: type, source: Any) -> Any:
    """An instance of config class ``cls`` from the same-named fields of ``source`` (the stage config)."""
    return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})


@dataclass
class DistillBatch:
    """A micro-batch plus the teacher-side tensors its method needs (flat over response positions)."""

    tokens: TokenBatch
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> DistillBatch:
        return DistillBatch(self.tokens.to(device), {k: v.to(device) for k, v in self.tensors.items()}, self.info)


@dataclass
class Context:
    """What a method is built from besides its own config: models, signals, the run's training options."""

    student: torch.nn.Module
    tok: Any
    signals: Signals
    task: Any
    train: TrainingConfig
    teacher: tuple[torch.nn.Module, Any] | None = None
    teacher_tok: Any = None
    max_new_tokens: int = 64  # the teacher's budget (gkd students default to it)
    sample_temperature: float = 1.0
    rank: int = 0
    world: int = 1
    keep: str = "all"  # which teacher samples to train on: all, or only those the task scorer accepts


def same_vocabulary(a: Any, b: Any) -> bool:
    """Token-level KD needs identical token ids for identical strings."""
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def correct_rows(rows: list[SignalRow], signals: Signals, task: Any) -> list[SignalRow]:
    """The teacher samples the task's scorer accepts: what an attacker with a verifier trains on."""
    scores = task.score_batch([signals.examples[r.example_id] for r in rows], [r.response for r in rows])
    kept = [r for r, s in zip(rows, scores) if s.correct]
    if not kept:
        raise DGError(
            f"{signals.uri}: keep=correct, but none of the {len(rows)} teacher samples is correct; "
            "expected a teacher that solves some prompts (or keep=all)"
        )
    log.info("keep=correct: %d of %d teacher samples are correct", len(kept), len(rows))
    return kept


def cross_entropy(logits: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of the response tokens given full ``logits[:, :-1]``, and their count."""
    mask = batch.targets_mask()
    n = int(mask.sum())
    nll = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), batch.input_ids[:, 1:].reshape(-1), reduction="none"
    ).view_as(mask)
    return (nll * mask).sum() / max(1, n), n


class Method:
    """Base of the four methods: picks each micro-batch's signal rows; subclasses build the batch and the loss."""

    name: ClassVar[str] = ""
    default_kind: ClassVar[str | None] = None  # the divergence when `kind` is empty; None: matches only text
    needs_topk: ClassVar[bool] = False  # the signals must hold teacher log-probs
    needs_teacher: ClassVar[bool] = False  # the teacher scores batches while training (on-policy)
    same_vocab: ClassVar[bool] = False  # token-level: the student must share the teacher's tokenizer

    def __init__(self, cfg: Any, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.tok, self.signals, self.task = ctx.tok, ctx.signals, ctx.task
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.rows = [r for r in ctx.signals.rows if r.example_id in ctx.signals.examples]
        if not self.rows:
            raise DGError(f"{ctx.signals.uri}: no teacher samples match the dataset's examples")
        if ctx.keep == "correct":
            self.rows = correct_rows(self.rows, ctx.signals, ctx.task)
        self._prompt_ids: dict[str, list[int]] = {}
        ttok = ctx.teacher[1] if ctx.teacher is not None else ctx.teacher_tok
        if self.same_vocab and (ttok is None or not same_vocabulary(ttok, self.tok)):
            raise DGError(
                f"method {self.name!r} needs the student to share the teacher's tokenizer; "
                "this student's differs: use method=xtok (cross-tokenizer) or sft"
            )
        if self.needs_topk and not ctx.signals.has_topk:
            raise DGError(
                f"{ctx.signals.uri}: method {self.name!r} needs teacher token log-probs, these signals are text only"
            )
        if self.needs_teacher and ctx.teacher is None:
            raise DGError(f"method {self.name!r} scores student samples online: expected the teacher model loaded")

    @classmethod
    def student_new_tokens(cls, options: Any) -> int:
        """Tokens the student itself samples per sequence while training (0: it never samples)."""
        return 0

    @classmethod
    def divergence(cls, options: Any) -> str | None:
        """The divergence this method matches (None: it matches no distribution, only text)."""
        return None if cls.default_kind is None else (getattr(options, "kind", "") or cls.default_kind)

    @property
    def kind(self) -> str:
        return self.divergence(self.cfg) or ""

    def prompt_ids(self, example_id: str) -> list[int]:
        if example_id not in self._prompt_ids:
            ex = self.signals.examples[example_id]
            self._prompt_ids[example_id] = encode_prompt(self.tok, self.task.prompt(ex, self.tok))
        return self._prompt_ids[example_id]

    def kept(self, prompt: list[int], response: list[int]) -> int:
        """How many response tokens survive ``max_length`` truncation."""
        return max(0, min(len(response), self.ctx.train.max_length - len(prompt)))

    def make_batch(self, step: int, micro: int) -> DistillBatch:
        t = self.ctx.train
        idx = row_indices(
            len(self.rows),
            t.batch_size,
            step,
            micro,
            seed=t.seed,
            grad_accum=t.grad_accum,
            rank=self.ctx.rank,
            world=self.ctx.world,
        )
        return self.batch([self.rows[i] for i in idx], step, micro)

    def batch(self, rows: list[SignalRow], step: int, micro: int) -> DistillBatch:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: DistillBatch) -> LossOut:
        raise NotImplementedError

    def with_ce(
        self, div: torch.Tensor, logits: torch.Tensor, batch: DistillBatch, denom: int | None = None
    ) -> LossOut:
        """The divergence plus ``ce_weight`` x cross-entropy, with the statistics every method reports."""
        tb = batch.tokens
        stats = {"div": float(div.detach()), **batch.info}
        w = getattr(self.cfg, "ce_weight", 0.0)
        if not w:
            return LossOut(div, tb.n_response_tokens, stats, denom)
        ce, n = cross_entropy(logits, tb)
        return LossOut(div + w * ce, n, {**stats, "ce": float(ce.detach())}, denom)
