"""Pieces the `train` and `distill` stages share: loading the model to train, naming outputs, saving."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM

from dg_core.checkpoint import config_hash
from dg_core.distill.trainer import prepare_model, stage_metrics, train
from dg_core.distill.training import TrainingConfig, training_part
from dg_core.errors import DGError
from dg_core.models import attach_lora, load_model, merge_lora, save_model
from dg_core.store import output_uri
from dg_core.utils import json_safe


def output_uris(kind: str, output: str, params: dict[str, Any]) -> tuple[str, str]:
    """(model URI, checkpoint URI): the given output (default ``<root>/<kind>/<key>``) and its sibling."""
    out = output or output_uri(kind, params)
    return out, out.rstrip("/") + ".ckpt"


def load_trainable(
    ref: str,
    *,
    seed: int,
    reinit: bool,
    settings: TrainingConfig,
    device: str = "auto",
    keep_dropout: bool = True,
) -> tuple[torch.nn.Module, Any]:
    """The model to train in float32 (bf16 autocast on CUDA happens in the trainer), optionally re-initialised
    from ``seed`` so random-init probe students differ per seed, then LoRA-wrapped or fully trainable.
    ``keep_dropout=False`` zeroes every dropout layer (what TRL's distillation trainers do by default)."""

    model, tok = load_model(ref, device=device, dtype="float32")
    if reinit:
        if settings.lora:
            raise DGError("reinit=true with lora=true: a random model has nothing to adapt; use full fine-tuning")
        dev = next(model.parameters()).device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
        fresh.generation_config = model.generation_config
        model = fresh.to(dev)
    if not keep_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    return prepare_model(model, settings), tok


def _unsharded(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg: TrainingConfig) -> torch.nn.Module:
    """A whole CPU copy of a model FSDP/DeepSpeed sharded, from the state dict gathered on rank 0 (only GPU
    runs use these engines; CI covers DDP)."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    fresh = AutoModelForCausalLM.from_config(base.config, dtype=torch.float32)
    fresh.generation_config = base.generation_config
    if cfg.lora:
        fresh = attach_lora(fresh, r=cfg.lora_r, alpha=cfg.lora_alpha)
    fresh.load_state_dict(state)
    return fresh


def save_trained(model: torch.nn.Module, tok: Any, uri: str, *, lora: bool, metadata: dict[str, Any]) -> str:
    """Publish the trained model as plain safetensors weights (a LoRA adapter is merged first)."""

    if lora:
        model = merge_lora(model)
    return save_model(model, tok, uri, metadata=metadata)


def train_and_publish(
    model: torch.nn.Module,
    tok: Any,
    make_batch: Any,
    loss_fn: Any,
    cfg: TrainingConfig,
    *,
    stage: str,
    accelerator: Any,
    out_uri: str,
    checkpoint_uri: str,
    params: dict[str, Any],
    head: dict[str, Any],
    on_step: Any = None,
    with_stats: bool = False,
) -> dict[str, Any]:
    """Run the training loop, publish the model with its config and summary, close the stage's metrics.

    ``cfg``: the stage's config (its :class:`TrainingConfig` fields drive the loop, its hash guards resumes).

    ``head``: the summary's leading fields (what was trained on what); the loop's figures follow, and with
    ``with_stats`` the loss function's mean extra statistics as ``mean_<name>``.
    """

    metrics = stage_metrics(stage)
    try:
        result = train(
            model,
            make_batch,
            loss_fn,
            training_part(cfg),
            stage=stage,
            checkpoint_uri=checkpoint_uri,
            config_hash=config_hash(cfg),
            metrics=metrics,
            on_step=on_step,
            accelerator=accelerator,
        )
        summary = json_safe(
            {
                **head,
                "steps": result.steps,
                "resumed_from": result.start_step,
                "final_loss": result.final_loss,
                "tokens_per_s": result.tokens_per_s,
                "seconds": result.seconds,
                **({f"mean_{k}": v for k, v in result.stats.items()} if with_stats else {}),
            }
        )
        if accelerator.is_main_process:
            if result.full_state is not None:
                model = _unsharded(model, result.full_state, cfg)
            save_trained(model, tok, out_uri, lora=cfg.lora, metadata={"config": params, "summary": summary})
        accelerator.wait_for_everyone()
    except BaseException:
        metrics.close(success=False)
        raise
    metrics.close(success=True)
    return {**summary, "model": out_uri, "reused": False}
