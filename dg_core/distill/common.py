"""Pieces the `train` and `distill` stages share: loading the model to train, naming outputs, saving."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from dg_core import store
from dg_core.distill.trainer import TrainSettings, prepare_model
from dg_core.errors import DGError


def run_key(kind: str, params: dict[str, Any]) -> str:
    """A short content hash of a stage's parameters: same config -> same output and checkpoint URIs, so a
    restarted stage finds its checkpoint and a finished one its result."""
    body = json.dumps({"kind": kind, **params}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def clean(summary: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf -> None so summaries stay valid JSON (manifests refuse NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def output_uris(kind: str, output: str, params: dict[str, Any]) -> tuple[str, str]:
    """(model URI, checkpoint URI): the given output (default ``<root>/<kind>/<key>``) and its sibling."""
    key = run_key(kind, params)
    out = output or store.join(store.default_root(), kind, key)
    return out, out.rstrip("/") + ".ckpt"


def load_trainable(
    ref: str,
    *,
    seed: int,
    reinit: bool,
    settings: TrainSettings,
    device: str = "auto",
    keep_dropout: bool = True,
) -> tuple[torch.nn.Module, Any]:
    """The model to train in float32 (bf16 autocast on CUDA happens in the trainer), optionally re-initialised
    from ``seed`` so random-init probe students differ per seed, then LoRA-wrapped or fully trainable.
    ``keep_dropout=False`` zeroes every dropout layer (what TRL's distillation trainers do by default)."""
    from dg_core.models import load_model

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


def save_trained(model: torch.nn.Module, tok: Any, uri: str, *, lora: bool, metadata: dict[str, Any]) -> str:
    """Publish the trained model as plain safetensors weights (a LoRA adapter is merged first)."""
    from dg_core.models import merge_lora, save_model

    if lora:
        model = merge_lora(model)
    return save_model(model, tok, uri, metadata=metadata)
