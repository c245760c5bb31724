"""LoRA through peft: attach, save the adapter, merge, and reach the base model by switching it off.

Calibration relies on `reference_logits` — π₀ is the same weights with the adapter disabled, so no second
teacher copy sits in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from dg_core import store


def attach_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
) -> PeftModel:
    """Wrap `model` with a fresh LoRA adapter on every linear layer (or the named modules)."""
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules)
        if isinstance(target_modules, (list, tuple))
        else (target_modules or "all-linear"),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path, trainable: bool = True) -> PeftModel:
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def save_adapter(model: PeftModel, uri: str, *, metadata: dict | None = None, base: str | None = None) -> str:
    """Publish the adapter; ``base`` (the base model's reference, e.g. its store URI) replaces the local path the
    base was loaded from (a pod's fetch cache) as ``base_model_name_or_path`` in ``adapter_config.json``."""
    with tempfile.TemporaryDirectory(prefix="dg-adapter-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if base:
            import json

            for cfg_path in Path(tmp).rglob("adapter_config.json"):
                cfg = json.loads(cfg_path.read_text())
                cfg["base_model_name_or_path"] = base
                cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        store.publish(tmp, uri, metadata={"kind": "adapter", **(metadata or {})})
    return uri


def merge_lora(model: PeftModel) -> PreTrainedModel:
    """Fold the adapter into the base weights and return the plain model."""
    return model.merge_and_unload()


@contextmanager
def adapter_disabled(model: torch.nn.Module):
    """Run the base model π₀ through the same module (no-op for a model without adapters)."""
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
    else:
        yield model
