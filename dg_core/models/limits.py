"""Up-front length checks: does a model's context hold what a stage will ask of it?

Run before any generation, so a stage fails in seconds with one line naming the model, instead of an
``IndexError`` (a device-side assert on GPU) minutes in. Two questions:

- generation: the longest prompt under the model's own tokenizer plus its token budget;
- scoring another model's text (diagnose, r_cal proxies): the longest prompt plus that model's budget converted
  into this model's tokens, at the ratio of the two tokenizers' tokens per character on the task's own text
  (prompts and reference answers), plus one for EOS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dg_core.errors import DGError

__all__ = ["check_generation_fits", "check_scoring_fits", "context_limit", "model_name"]


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


def _longest_prompt(tokenizer: Any, prompts: Sequence[str]) -> int:
    from dg_core.generate import encode_prompt

    return max((len(encode_prompt(tokenizer, p)) for p in prompts), default=0)


def check_generation_fits(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, *, name: str = "", role: str = "model"
) -> None:
    """Refuse (one line, naming the model) when the longest prompt + ``max_new_tokens`` exceeds the context."""
    limit = context_limit(model)
    if limit is None or not prompts:
        return
    longest = _longest_prompt(tokenizer, prompts)
    if longest + max_new_tokens > limit:
        raise DGError(
            f"{role} {name or model_name(model, tokenizer)}: context of {limit} positions, but the longest prompt is "
            f"{longest} tokens + max_new_tokens={max_new_tokens}; expected at most {limit} in all (lower "
            "max_new_tokens or use a model with a longer context)"
        )


def _tokens_per_char(tokenizer: Any, texts: Sequence[str]) -> float:
    chars = sum(len(t) for t in texts)
    toks = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return toks / max(1, chars)


def check_scoring_fits(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    source_tokenizer: Any,
    source_max_new_tokens: int,
    sample_texts: Sequence[str],
    *,
    name: str = "",
    source: str = "the teacher",
    role: str = "model",
) -> None:
    """Refuse when this model cannot score another model's responses of up to ``source_max_new_tokens`` of that
    model's tokens (converted at the tokenizers' ratio measured on ``sample_texts``), after its own prompt."""
    limit = context_limit(model)
    if limit is None or not prompts:
        return
    texts = [t for t in sample_texts if t] or list(prompts)
    ratio = _tokens_per_char(tokenizer, texts) / max(1e-9, _tokens_per_char(source_tokenizer, texts))
    need = math.ceil(source_max_new_tokens * ratio) + 1
    longest = _longest_prompt(tokenizer, prompts)
    if longest + need > limit:
        raise DGError(
            f"{role} {name or model_name(model, tokenizer)}: context of {limit} positions, but scoring {source}'s "
            f"responses of up to {source_max_new_tokens} tokens needs about {need} of its own tokens after a prompt "
            f"of {longest}; expected at most {limit} in all (lower max_new_tokens or use a model with a longer context)"
        )
