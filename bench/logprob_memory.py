"""Peak extra memory of one ``token_logprobs`` forward + backward on a model of SmolLM2-135M's shape.

    .venv/bin/python bench/logprob_memory.py [--batch 8] [--length 180] [--lora-r 16] [--full] [--threads 1]

The model is built in code with random weights and SmolLM2-135M-Instruct's configuration (Llama, 30 layers,
hidden 576, 49,152-token vocabulary, tied embeddings): memory depends on the shapes, not on the weights. As in
calibration, a LoRA adapter (r=16 on the attention and MLP projections) is trained (``--full``: every weight).
The figure is the peak above the resident set before the call (see ``bench/distill.py``'s ``PeakMem``), for
the forward pass with gradients on, the policy-gradient-shaped loss on the log-probs and the backward pass,
with and without gradient checkpointing. Each configuration runs twice and the second run is reported.

Measured on the shared 2-core machine (1 thread): before chunking (full ``[B, T, V]`` logits + fp32 log-sum-exp)
2.93 GiB without and 1.41 GiB with gradient checkpointing; chunked, 1.70 GiB without and 0.18 GiB with it
(the default for models of 20M+ parameters). Seconds vary 30-75 s with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def build(lora_r: int, full: bool, checkpointing: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from dg_core.models.lora import attach_lora

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).float()
    if full:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        model = attach_lora(model, r=lora_r, alpha=2 * lora_r)
    if checkpointing:
        from dg_core.base.logprobs import enable_checkpointing

        enable_checkpointing(model)
    return model.train()


def measure(model: torch.nn.Module, batch: int, length: int) -> tuple[float, float]:
    from distill import PeakMem

    from dg_core.base.generate import TokenBatch
    from dg_core.calibrate.grpo import token_logprobs

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, SMOLLM2_135M["vocab_size"], (batch, length), generator=g)
    att = torch.ones_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, length // 4 :] = True
    tb = TokenBatch(ids, att, resp)
    adv = torch.randn(batch, 1, generator=g)
    with PeakMem(torch.device("cpu")) as pm:
        t0 = time.perf_counter()
        lp, _ = token_logprobs(model, tb, 1.0, with_entropy=True)
        mask = tb.targets_mask().float()
        loss = -(lp * adv * mask).sum() / mask.sum()
        loss.backward()
        seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return pm.peak / 2**30, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=180)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # freed large blocks go back to the OS, so the peak above the starting resident set is the call's own
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)
    mode = "full fine-tuning" if args.full else f"LoRA r={args.lora_r}"
    print(f"token_logprobs forward+backward, batch {args.batch} x {args.length} tokens, V=49152, {mode}, CPU fp32")
    for ckpt in (False, True):
        model = build(args.lora_r, args.full, ckpt)
        measure(model, args.batch, args.length)  # warm-up: first-call allocations
        gb, s = measure(model, args.batch, args.length)
        print(f"  gradient checkpointing {'on ' if ckpt else 'off'}: peak extra {gb:.2f} GiB, {s:.1f} s")
        del model


if __name__ == "__main__":
    main()
