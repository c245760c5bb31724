"""Per-token log-probabilities (and entropies, top-k) of a causal LM without a ``[B, T, V]`` logits tensor.

A model's logits are ``batch × length × vocabulary`` floats: 8 × 180 × 49k is 280 MB in fp32, and log-softmax,
its gradient and an fp32 upcast each add another copy; at 8B with a 128k vocabulary one copy of a modest batch
is tens of GB. Everything here runs the model body once to its last hidden states (``[B, T, H]``, small), then
applies the output head to a chunk of positions at a time and keeps only what is asked for (the log-prob of the
realised token, the entropy, the top-k): :func:`dg_core.base.kl.chunked_rows`, the project's one chunked,
recomputing implementation, bounds the backward pass the same way.

How the hidden states are obtained: the model's output embedding is swapped for an identity for the duration of
one forward call, so the call goes through every wrapper (PEFT, accelerate/DDP) exactly as usual and its
``.logits`` are the last hidden states. Models whose forward rescales logits after the head in ways not
reproduced here fall back to full logits (still chunked over positions for the log-softmax).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dg_core.base.kl import _chunks, auto_chunk_rows, chunked_rows
from dg_core.base.modelinfo import REAL_MODEL_MIN_PARAMS

__all__ = ["TokenLogprobs", "enable_checkpointing", "token_logprobs", "wants_checkpointing"]

# config attributes of logit post-processing this module does not reproduce (fall back to full logits)
_UNSUPPORTED = ("logit_scale", "logits_scaling", "output_multiplier_scale", "logit_softcapping")


@dataclass
class TokenLogprobs:
    """``logprobs[b, t]`` = log p(ids[b, t+1] | ids[b, :t+1]) ``[B, T-1]`` (float32), and optionally the entropy
    of each position's distribution and its top-k ids/log-probs ``[B, T-1, k]`` (no gradient)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under PEFT / DDP / accelerate wrappers (LoRA layers stay injected in it)."""
    m = model
    for _ in range(8):
        if hasattr(m, "get_base_model") and callable(m.get_base_model):
            m = m.get_base_model()
        elif isinstance(m, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            m = m.module
        else:
            break
    return m


@contextlib.contextmanager
def _hidden_states_out(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, float | None] | None]:
    """Within the block, ``model(...).logits`` are the last hidden states; yields (head, softcap), or None when
    this model's logits cannot be rebuilt from its head (then the caller uses full logits)."""
    lm = _unwrap(model)
    get = getattr(lm, "get_output_embeddings", None)
    head = get() if callable(get) else None
    cfg = getattr(lm, "config", None)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if (
        head is None
        or not hasattr(lm, "set_output_embeddings")
        or any(getattr(text_cfg, a, None) not in (None, 1, 1.0) for a in _UNSUPPORTED)
    ):
        yield None
        return
    softcap = getattr(text_cfg, "final_logit_softcapping", None)
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield head, softcap
    finally:
        lm.set_output_embeddings(head)


def _rows_fn(head, softcap, temperature, with_entropy: bool):
    """Per chunk of positions ``[r, H]`` (plus targets ``[r]``): log-prob of the target and the entropy."""

    def fn(h: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        logits = head(h) if head is not None else h
        logits = logits.float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        if temperature != 1.0:
            logits = logits / temperature
        lse = torch.logsumexp(logits, -1)
        lp = logits.gather(-1, tgt.long().unsqueeze(-1)).squeeze(-1) - lse
        if not with_entropy:
            return lp
        with torch.no_grad():
            ent = lse - (torch.softmax(logits, -1) * logits).sum(-1)
        return torch.stack([lp, ent], -1)

    return fn


def _chunk_rows(vocab: int, device: torch.device, chunk_positions: int | None) -> int:

    return chunk_positions or auto_chunk_rows(vocab, None, device)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    topk: int = 0,
    chunk_positions: int | None = None,
) -> TokenLogprobs:
    """Log-probabilities of the realised next tokens of a right-padded batch, chunked over positions.

    Differentiable (in the model's trainable weights, LoRA or full) when gradients are on; entropies and top-k
    never carry gradients. ``chunk_positions``: positions per head application (default: what keeps one
    ``[rows, V]`` float32 temporary at 16 MB on CPU, 256 MB on a GPU).
    """

    device = next(model.parameters()).device
    ids = input_ids.to(device)
    att = attention_mask.to(device) if attention_mask is not None else None
    B, T = ids.shape
    with _hidden_states_out(model) as hs:
        out = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    head, softcap = hs if hs is not None else (None, None)
    flat = out.reshape(B * (T - 1), out.shape[-1])
    tgt = ids[:, 1:].reshape(-1)
    vocab = out.shape[-1] if head is None else _head_rows(head)
    step = _chunk_rows(vocab, device, chunk_positions)
    chunks = _chunks(flat.shape[0], None, step)
    shared = [p for p in head.parameters() if p.requires_grad] if head is not None else []
    fn = _rows_fn(head, softcap, temperature, with_entropy)
    vals = chunked_rows(fn, [flat, tgt], chunks, shared)
    if with_entropy:
        lp, ent = vals[:, 0].reshape(B, T - 1), vals[:, 1].detach().reshape(B, T - 1)
    else:
        lp, ent = vals.reshape(B, T - 1), None
    res = TokenLogprobs(lp, ent)
    if topk > 0:
        ids_parts, lp_parts = [], []
        with torch.no_grad():
            for c in chunks:
                logits = (head(flat[c]) if head is not None else flat[c]).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                if temperature != 1.0:
                    logits = logits / temperature
                top = torch.log_softmax(logits, -1).topk(min(topk, logits.shape[-1]), dim=-1)
                ids_parts.append(top.indices)
                lp_parts.append(top.values)
        k = ids_parts[0].shape[-1]
        res.topk_ids = torch.cat(ids_parts).reshape(B, T - 1, k)
        res.topk_logprobs = torch.cat(lp_parts).reshape(B, T - 1, k)
    return res


def _head_rows(head: torch.nn.Module) -> int:
    w = getattr(head, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else 1 << 16


CHECKPOINTING_MIN_PARAMS = REAL_MODEL_MIN_PARAMS


def wants_checkpointing(model: torch.nn.Module, setting: str = "auto") -> bool:
    """``on``/``off``, or ``auto``: on for real models (≥ 20M parameters), off for the tiny zoo, where the
    recomputation costs time and saves nothing that matters."""
    if setting in ("on", "off"):
        return setting == "on"
    return sum(p.numel() for p in _unwrap(model).parameters()) >= CHECKPOINTING_MIN_PARAMS


def enable_checkpointing(model: torch.nn.Module) -> bool:
    """Turn on activation (gradient) checkpointing of the transformer blocks (non-reentrant, so a frozen base
    under LoRA needs no input-gradient hooks). Active in training mode only; generation is unaffected. Returns
    whether the model supports it."""
    lm = _unwrap(model)
    if not getattr(lm, "supports_gradient_checkpointing", False):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.x name
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(lm, "config", None) is not None:
        lm.config.use_cache = False  # the cache is for generation; generate() passes use_cache explicitly
    return True
