"""Tiny causal LMs whose next-token distributions the traps tests control exactly.

A :func:`bigram_llama` is a real ``LlamaForCausalLM`` (so ``generate``, padding and the whole HF path run) whose
attention and MLP outputs are zeroed: the residual stream is the one-hot embedding of the current token, and
the LM head maps token i to logits ``peak`` on its successor and ``tail`` (plus optional noise) elsewhere.
"""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def bigram_llama(
    tokenizer, transitions: dict[str, str], *, peak: float = 12.0, tail: float = -4.0, noise: float = 0.0, seed: int = 0
) -> LlamaForCausalLM:
    """A next-token table as a Llama: ``transitions`` maps a token string to its successor's token string.

    Tokens without an entry predict uniformly (all logits ``tail``). ``noise`` adds N(0, noise) to the tail logits.
    """
    v = len(tokenizer)
    h = v + (-v % 2)
    cfg = LlamaConfig(
        vocab_size=v,
        hidden_size=h,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = torch.zeros(v, h)
        emb[torch.arange(v), torch.arange(v)] = 1.0
        model.model.embed_tokens.weight.copy_(emb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        table = torch.full((v, h), tail) + noise * torch.randn(v, h, generator=g)
        for src, dst in transitions.items():
            i, j = tokenizer.convert_tokens_to_ids(src), tokenizer.convert_tokens_to_ids(dst)
            table[:, i] = tail + noise * torch.randn(v, generator=g)
            table[j, i] = peak
        model.lm_head.weight.copy_(table / math.sqrt(h))  # RMSNorm scales a one-hot row to sqrt(h)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
