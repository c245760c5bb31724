"""Publish a causal LM with its tokenizer to the store, as safetensors (what every stage that trains writes)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dg_core import store
from dg_core.errors import DGError

log = logging.getLogger(__name__)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    uri: str,
    *,
    metadata: dict[str, Any] | None = None,
    files: dict[str, str] | None = None,
) -> str:
    """Save as safetensors and publish atomically to `uri` (merged weights; adapters are saved separately);
    ``files``: extra text files (name -> content) published with it, e.g. an HF ``README.md`` model card."""
    if hasattr(model, "peft_config"):
        raise DGError("save_model got a PEFT model: merge it (dg_core.models.merge_lora) or use save_adapter")
    with tempfile.TemporaryDirectory(prefix="dg-model-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        if metadata:
            (Path(tmp) / "dg_model.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
        store.publish(tmp, uri, metadata={"kind": "model", **(metadata or {})})
    log.info("saved model to %s", uri)
    return uri
