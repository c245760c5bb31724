"""What a loaded model is, for the checks and messages of every layer: its context length and its name."""

from __future__ import annotations

from typing import Any

#: Models this large are real pretrained checkpoints; the offline zoo's members are below 1M parameters.
REAL_MODEL_MIN_PARAMS = 20_000_000


def context_limit(model: Any) -> int | None:
    """Positions the model (or a model config) can attend over (``max_position_embeddings`` / ``n_positions``),
    or None if unknown."""
    cfg = getattr(model, "config", model)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def model_name(model: Any, tokenizer: Any = None) -> str:
    """A name for messages: the checkpoint path/id the model was loaded from, never a tokenizer class name."""
    for obj in (tokenizer, getattr(model, "config", None)):
        for attr in ("name_or_path", "_name_or_path"):
            v = getattr(obj, attr, None)
            if isinstance(v, str) and v:
                return v
    cfg = getattr(model, "config", None)
    return f"a {getattr(cfg, 'model_type', type(model).__name__)} model"
