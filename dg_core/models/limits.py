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

from dg_core.base.generate import encode_prompt
from dg_core.base.logprobs import token_logprobs
from dg_core.base.modelinfo import REAL_MODEL_MIN_PARAMS, context_limit, model_name
from dg_core.errors import DGError
from dg_core.models.resolve import resolve_model_dir

__all__ = [
    "check_generation_fits",
    "check_models_text",
    "check_scoring_fits",
    "check_zoo_refs",
    "is_real_model",
    "text_nll_ratio",
]


def _longest_prompt(tokenizer: Any, prompts: Sequence[str]) -> int:

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


# ------------------------------------------------------------------------------------ real models vs the zoo
def _parameters_in(d: Any) -> int:
    """Parameter count of a saved model directory, from its safetensors headers (no weights are read)."""
    import json
    from pathlib import Path

    total = 0
    for p in sorted(Path(d).glob("*.safetensors")):
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for k, t in header.items():
            if k != "__metadata__":
                total += math.prod(t.get("shape") or [1])
    return total


def is_real_model(model: Any) -> bool:
    """Whether ``model`` (a module, or a model reference) is a real checkpoint (≥ 20M parameters), not a zoo toy."""
    if isinstance(model, str):
        return _parameters_in(resolve_model_dir(model)) >= REAL_MODEL_MIN_PARAMS
    return sum(p.numel() for p in model.parameters()) >= REAL_MODEL_MIN_PARAMS


def check_zoo_refs(teacher: Any, teacher_ref: str, refs: dict[str, Sequence[str]], *, allow_zoo: bool) -> None:
    """Refuse a real teacher paired with ``zoo:`` models (a random-init toy proxy or student measures noise, and a
    zoo default would otherwise stand in silently), unless ``allow_zoo`` asks for it. ``refs``: role -> refs."""
    if allow_zoo:
        return
    zoo = [(role, r) for role, rs in refs.items() for r in rs if str(r).startswith("zoo:")]
    if zoo and is_real_model(teacher):
        role, r = zoo[0]
        raise DGError(
            f"{role} {r} is a tiny random-init zoo model, but teacher {teacher_ref} is a real model; expected a real "
            f"{role} (e.g. a smaller model of the teacher's family), or allow_zoo=true for a plumbing test"
        )


def text_nll_ratio(model: Any, tokenizer: Any, texts: Sequence[str]) -> tuple[float, float]:
    """(nats per character of ``texts`` under the model, nats per character of a uniform guess over its
    vocabulary), over the same tokens: how far the model is from knowing nothing about this text."""
    import torch

    texts = [t for t in texts if t]
    if not texts:
        return 0.0, 0.0
    bos = getattr(tokenizer, "bos_token_id", None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = [
        ([bos] if bos is not None else []) + list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
    ]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        return 0.0, 0.0
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
    with torch.no_grad():
        lp = token_logprobs(model, ids, att).logprobs
    mask = att[:, 1:].bool().to(lp.device)
    nll = float(-(lp * mask).sum())
    n_tok = int(mask.sum())
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or len(tokenizer))
    chars = sum(len(t) for t in texts)
    return nll / chars, n_tok * math.log(vocab) / chars


def check_models_text(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_ratio: float, name: str = "", role: str = "proxy"
) -> float:
    """Refuse a model whose per-character log-likelihood on the task's text is not far from a uniform guess over
    its vocabulary (``nll / uniform > max_ratio``; a random-init proxy sits near 1): its r_cal would be noise.
    Returns the ratio (``max_ratio`` 0: measured, never refused)."""
    per_char, uniform = text_nll_ratio(model, tokenizer, texts)
    ratio = per_char / uniform if uniform > 0 else 0.0
    if max_ratio > 0 and ratio > max_ratio:
        raise DGError(
            f"{role} {name or model_name(model, tokenizer)} does not model the task's text: {per_char:.2f} nats/char "
            f"on {len(texts)} task texts vs {uniform:.2f} for a uniform guess over its vocabulary (ratio {ratio:.2f}, "
            f"expected <= {max_ratio}); use a trained proxy (e.g. a smaller model of the teacher's family)"
        )
    return ratio
