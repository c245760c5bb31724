"""Stage `distill`: train a probe student from a teacher with one attack method (sft, kd, gkd, xtok).

Teacher signals (samples, top-k log-probs) are produced once per teacher/dataset/sampling setting and reused
(see :mod:`dg_core.distill.signals`); the student is trained by :func:`dg_core.distill.trainer.train` with
checkpoints next to its output, so a killed run resumes, and a finished run is not repeated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from dg_core import store
from dg_core.base.generate import encode_prompt
from dg_core.base.modelinfo import context_limit
from dg_core.config import addressed, option
from dg_core.data import load_split, task_of, with_task_budget
from dg_core.distill import methods
from dg_core.distill.common import load_trainable, output_uris, train_and_publish
from dg_core.distill.methods import gkd, same_vocabulary, xtok
from dg_core.distill.signals import SignalsConfig, build_signals, default_signals_uri, load_signals
from dg_core.distill.trainer import device_of, make_accelerator
from dg_core.distill.training import TrainingConfig
from dg_core.errors import DGError
from dg_core.models import load_model, load_tokenizer, resolve_model_dir
from dg_core.models.limits import check_generation_fits, check_zoo_refs
from dg_core.utils import seed_everything, set_threads_from_env

log = logging.getLogger(__name__)
#: Runs on every rank under `accelerate launch`/torchrun (dg_core.launch): data-parallel, rank 0 publishes.
MULTI_PROCESS = True


@dataclass
class Config(xtok.Config, gkd.Config, TrainingConfig, SignalsConfig):
    """The distill stage: training options (:class:`TrainingConfig`), what the teacher is sampled on
    (:class:`SignalsConfig`), every method's own fields (``dg_core.distill.methods.<name>.Config``), and these."""

    student: str = option("zoo:student-llama", "Student to start from (zoo member or any model reference).")
    method: str = option("sft", "Attack method.", choices=methods.METHODS)
    dropout: bool = option(False, "Keep the student's dropout during distillation (off by default, as in TRL).")
    keep: str = option(
        "all",
        "Teacher samples to train on: all, or only those the task's scorer accepts (an attacker with a verifier).",
        choices=("all", "correct"),
    )
    output: str = option("", "Where to publish the student (default: <store root>/students/<config hash>).")
    allow_zoo: bool = option(
        False, "Allow a zoo: student with a real (20M+ parameter) teacher (random-init toys: plumbing tests only)."
    )

    def check(self) -> None:
        super().check()
        if not self.teacher:
            raise DGError("config field 'teacher' is required: expected a model reference")
        if not self.dataset:
            raise DGError("config field 'dataset' is required: expected a prepared dataset URI")

    def divergence(self) -> str | None:
        """The divergence the method matches (None for sft, which matches text)."""
        return methods.get(self.method).METHOD.divergence(self)

    def signals_topk(self) -> int:
        """Top-k log-probs the method needs stored with the teacher samples (0: text only)."""
        return self.topk if methods.get(self.method).METHOD.needs_topk else 0


def run(cfg: Config, *, on_step: Any = None) -> dict:
    """Distil, publish the student, return its URI and training figures (a published result is reused).

    Under ``accelerate launch``/torchrun every process loads the models onto its own device, the teacher
    signals are sampled in shards across the processes, and the student trains data-parallel; rank 0 publishes.
    """

    cfg = with_task_budget(cfg)
    set_threads_from_env()
    skip = ("output", "checkpoint_every", "device", "resume", "allow_zoo")
    params = {k: v for k, v in addressed(cfg).items() if k not in skip}
    out_uri, ckpt_uri = output_uris("students", cfg.output, params)
    if store.is_published(out_uri):
        meta = store.read_manifest(out_uri).get("metadata", {})
        if meta.get("config") == params:
            log.info("student already distilled at %s: reusing", out_uri)
            return {**meta.get("summary", {}), "model": out_uri, "reused": True}
    method = methods.get(cfg.method).METHOD
    # Created first so every process loads its models onto its own device under `accelerate launch`.
    accelerator = make_accelerator(None if cfg.device == "auto" else cfg.device)
    device = device_of(accelerator)
    teacher = None
    # Rank 0 first: a zoo member is built, and a store model fetched into the cache, once (not raced).
    with accelerator.main_process_first():
        if method.needs_teacher or not store.is_published(default_signals_uri(cfg, cfg.signals_topk())):
            teacher = load_model(cfg.teacher, device=device)
        check_before_sampling(cfg, teacher)
    sig_uri = build_signals(cfg, topk=cfg.signals_topk(), teacher=teacher, accelerator=accelerator)
    signals = load_signals(sig_uri)
    teacher_tok = teacher[1] if teacher is not None else _teacher_tokenizer(cfg)
    if not method.needs_teacher and teacher is not None:  # only on-policy KD needs the teacher while training
        teacher = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    seed_everything(cfg.seed)
    with accelerator.main_process_first():
        student, stok = load_trainable(
            cfg.student, seed=cfg.seed, reinit=cfg.reinit, settings=cfg, device=device, keep_dropout=cfg.dropout
        )
    ctx = methods.Context(
        student=student,
        tok=stok,
        signals=signals,
        task=task_of(cfg.dataset),
        train=cfg,
        teacher=teacher,
        teacher_tok=teacher_tok,
        max_new_tokens=cfg.max_new_tokens,
        sample_temperature=cfg.sample_temperature,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
        keep=cfg.keep,
    )
    m = methods.build(cfg.method, cfg, ctx)
    head = {
        "method": cfg.method,
        "divergence": cfg.divergence(),
        "student": cfg.student,
        "teacher": cfg.teacher,
        "signals": sig_uri,
        "processes": accelerator.num_processes,
    }
    return train_and_publish(
        student,
        stok,
        m.make_batch,
        m.loss,
        cfg,
        stage="distill",
        accelerator=accelerator,
        out_uri=out_uri,
        checkpoint_uri=ckpt_uri,
        params=params,
        head=head,
        on_step=on_step,
        with_stats=True,
    )


def check_before_sampling(cfg: Config, teacher: tuple[Any, Any] | None) -> None:
    """What would otherwise fail only after the teacher was sampled: token-level KD between two vocabularies,
    a teacher budget past its context, a student context shorter than ``max_length``."""
    from transformers import AutoConfig

    if cfg.student.startswith("zoo:") and not cfg.allow_zoo:
        check_zoo_refs(
            teacher[0] if teacher is not None else cfg.teacher, cfg.teacher, {"student": [cfg.student]}, allow_zoo=False
        )
    s_tok = load_tokenizer(cfg.student)
    t_tok = teacher[1] if teacher is not None else _teacher_tokenizer(cfg)
    if methods.get(cfg.method).METHOD.same_vocab and not same_vocabulary(t_tok, s_tok):
        raise DGError(
            f"method {cfg.method!r}: student {cfg.student} does not share teacher {cfg.teacher}'s vocabulary; "
            "expected one tokenizer for token-level KD (use method=xtok, cross-tokenizer, or sft)"
        )
    if teacher is not None:
        task = task_of(cfg.dataset)
        examples = load_split(cfg.dataset, cfg.split)
        examples = examples[: cfg.limit] if cfg.limit else examples
        prompts = cfg.teacher_prompts(task, examples, teacher[1])
        check_generation_fits(teacher[0], teacher[1], prompts, cfg.max_new_tokens, name=cfg.teacher, role="teacher")
    limit = context_limit(AutoConfig.from_pretrained(resolve_model_dir(cfg.student)))
    budget = methods.get(cfg.method).METHOD.student_new_tokens(cfg)
    if limit is not None and budget:  # the student samples too (gkd), on its own budget
        task = task_of(cfg.dataset)
        examples = load_split(cfg.dataset, cfg.split)
        examples = examples[: cfg.limit] if cfg.limit else examples
        longest = max((len(encode_prompt(s_tok, task.prompt(e, s_tok))) for e in examples), default=0)
        if longest + budget > limit:
            raise DGError(
                f"student {cfg.student}: context of {limit} positions, but the longest prompt is {longest} tokens + "
                f"student_max_new_tokens={budget}; expected at most {limit} in all (lower student_max_new_tokens)"
            )
    if limit is not None and cfg.max_length > limit:
        raise DGError(
            f"student {cfg.student}: context of {limit} positions, but max_length={cfg.max_length}; "
            f"expected max_length <= {limit}"
        )


def _teacher_tokenizer(cfg: Config) -> Any:

    return load_tokenizer(cfg.teacher)
