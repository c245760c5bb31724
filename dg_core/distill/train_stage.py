"""Stage `train`: supervised fine-tuning on a dataset's references (bootstraps zoo teachers, proxies, students).

The loss covers response tokens only (EOS appended, prompt masked), with the same tokenisation rule as
generation (:mod:`dg_core.base.generate`), so a model trained here answers in exactly the form it was shown.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from dg_core import store
from dg_core.base.generate import encode_prompt, encode_response, pack
from dg_core.config import option
from dg_core.data import Example, load_split, task_of
from dg_core.distill.common import load_trainable, output_uris, train_and_publish
from dg_core.distill.trainer import device_of, make_accelerator, response_ce, row_indices
from dg_core.distill.training import TrainingConfig, default
from dg_core.errors import DGError
from dg_core.utils import seed_everything, set_threads_from_env

log = logging.getLogger(__name__)
#: Runs on every rank under `accelerate launch`/torchrun (dg_core.launch): data-parallel, rank 0 publishes.
MULTI_PROCESS = True


@dataclass
class Config(TrainingConfig):
    """The train stage: the shared training options (its own defaults: a bootstrap runs longer) and these."""

    model: str = option("zoo:teacher", "Model to fine-tune (zoo member or any model reference).")
    dataset: str = option("", "Prepared dataset URI (from `dguard prep`).")
    split: str = option("train", "Split to train on.")
    style: str = option(
        "",
        "Train on meta.references[style] instead of the row's reference (synthetic math). A comma list (repeat a style to weight it) or `all` "
        "trains on every listed style of each row, so the model keeps a per-prompt choice of style instead of "
        "memorising the one each row happened to draw (calibration needs that choice to reshape). A row with an "
        "instruction holds only the style it asks for and trains on that one (the teacher learns to obey).",
    )
    steps: int = default("steps", 1000)
    batch_size: int = default("batch_size", 64)
    warmup_steps: int = default("warmup_steps", 50)
    checkpoint_every: int = default("checkpoint_every", 200)
    output: str = option("", "Where to publish the model (default: <store root>/trained/<config hash>).")

    def check(self) -> None:
        if not self.dataset:
            raise DGError("config field 'dataset' is required: expected a prepared dataset URI")


def _targets(ex: Example, style: str) -> list[str]:
    """The responses one row contributes: its reference, or its references in the requested styles."""
    if not style:
        if not ex.reference:
            raise DGError(f"example {ex.id}: empty reference, expected a response to train on (or set style)")
        return [ex.reference]
    refs = ex.meta.get("references") or {}
    wanted = sorted(refs) if style == "all" else [s.strip() for s in style.split(",") if s.strip()]
    if ex.meta.get("instruction"):  # an instructed row holds only the style it asks for: train on that one
        wanted = [s for s in wanted if s in refs]
    missing = [s for s in wanted if s not in refs]
    if missing or not wanted:
        raise DGError(f"example {ex.id}: no reference in style {style!r}, expected one of {sorted(refs)} or 'all'")
    return [refs[s] for s in wanted]


def run(cfg: Config, *, on_step: Any = None) -> dict:
    """Fine-tune, publish the model, return its URI and training figures (a published result is reused)."""
    set_threads_from_env()
    params = {k: v for k, v in asdict(cfg).items() if k not in ("output", "checkpoint_every", "device", "resume")}
    out_uri, ckpt_uri = output_uris("trained", cfg.output, params)
    if store.is_published(out_uri):
        meta = store.read_manifest(out_uri).get("metadata", {})
        if meta.get("config") == params:
            return {**meta.get("summary", {}), "model": out_uri, "reused": True}
    task = task_of(cfg.dataset)
    rows = load_split(cfg.dataset, cfg.split)
    if not rows:
        raise DGError(f"{cfg.dataset}: split {cfg.split!r} is empty, expected examples to train on")
    pairs = [(ex, t) for ex in rows for t in _targets(ex, cfg.style)]
    rows, targets = [ex for ex, _ in pairs], [t for _, t in pairs]
    seed_everything(cfg.seed)
    accelerator = make_accelerator(None if cfg.device == "auto" else cfg.device)
    with accelerator.main_process_first():  # rank 0 builds a zoo member or fills the cache, once
        model, tok = load_trainable(
            cfg.model, seed=cfg.seed, reinit=cfg.reinit, settings=cfg, device=device_of(accelerator)
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    prompt_ids = [encode_prompt(tok, task.prompt(ex, tok)) for ex in rows]
    resp_ids = [encode_response(tok, t) for t in targets]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def make_batch(step: int, micro: int):
        idx = row_indices(
            len(rows), cfg.batch_size, step, micro, seed=cfg.seed, grad_accum=cfg.grad_accum, rank=rank, world=world
        )
        return pack([prompt_ids[i] for i in idx], [resp_ids[i] for i in idx], pad, max_length=cfg.max_length)

    return train_and_publish(
        model,
        tok,
        make_batch,
        response_ce,
        cfg,
        stage="train",
        accelerator=accelerator,
        out_uri=out_uri,
        checkpoint_uri=ckpt_uri,
        params=params,
        head={"base": cfg.model, "dataset": cfg.dataset},
        on_step=on_step,
    )
