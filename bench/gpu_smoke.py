"""GPU smoke test: calibrate and distill for a few steps in bf16 on a real-size architecture.

Builds a Qwen2.5-0.5B-shaped teacher (896 hidden, 24 layers, 151,936-token vocabulary; random weights, so no
download) and a 12-layer student of the same shape family sharing its tokenizer, prepares a small synthetic-math
dataset, then runs `calibrate` (3 GRPO steps) and `distill` (method kd, 10 steps) through the same stage code the
pipelines run. Prints wall time, tokens/s and peak GPU memory per stage. Not a test: it prints figures.

    bash bench/gpu_smoke.sh            # on a GPU machine (under 8 minutes on one H100/H200)
    bash bench/gpu_smoke.sh --tiny     # the same path on CPU with a tiny config, to check the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from dg_core import store
from dg_core.cli import run_stage
from dg_core.models import save_model
from dg_core.models.zoo import build_tokenizer


def build(layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int, tok, uri: str) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    save_model(model, tok, uri)
    return sum(p.numel() for p in model.parameters())


def timed(name: str, overrides: list[str], tokens_key: str | None = None) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    summary = run_stage(name, None, overrides)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    flat = json.dumps(summary, default=str)
    print(f"[{name}] wall {wall:.1f}s  peak GPU memory {peak:.2f} GiB")
    print(f"[{name}] summary: {flat[:1500]}")
    return {"wall_s": wall, "peak_gib": peak, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = f"file://{tempfile.mkdtemp(prefix='dg-gpu-smoke-')}"
    os.environ["DG_STORE_ROOT"] = root
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device; use --tiny to check the script on CPU")

    tok = build_tokenizer("bpe")
    if args.tiny:
        shapes = {"teacher": (2, 64, 4, 2, 128, 1024), "student": (1, 64, 4, 2, 128, 1024)}
    else:  # Qwen2.5-0.5B shapes; student: half the depth
        shapes = {"teacher": (24, 896, 14, 2, 4864, 151936), "student": (12, 896, 14, 2, 4864, 151936)}
    uris = {}
    for role, s in shapes.items():
        uris[role] = store.join(root, "models", role)
        n = build(*s, tok, uris[role])
        print(f"built {role}: {n / 1e6:.1f}M params -> {uris[role]}")

    data_uri = store.join(root, "data", "synth-math")
    run_stage("prep", None, ["source=synthetic", "task=synthetic_math", "n=400", f"output={data_uri}"])

    steps, group, prompts, new = (2, 4, 2, 16) if args.tiny else (3, 8, 16, 128)
    cal = timed(
        "calibrate",
        [
            f"teacher={uris['teacher']}",
            "proxies=[zoo:proxy]",
            f"dataset={data_uri}",
            f"steps={steps}",
            f"group_size={group}",
            f"prompts_per_step={prompts}",
            f"max_new_tokens={new}",
            "eval_every=0",
            "eval_n=32",
            "sampled_k=1",
            "preflight_accuracy=0",
            "stop_accuracy_ratio=0",
            "min_retention=0",
            "checkpoint_every=0",
            f"device={device}",
            "progress=false",
            "eta=-1",
            "cal_gate=none",
            f"output={store.join(root, 'calibrated')}",
        ],
    )
    sampled = steps * group * prompts * new  # upper bound: sequences x max_new_tokens
    print(
        f"[calibrate] <= {sampled / cal['wall_s']:.0f} sampled tokens/s over the whole stage "
        f"({steps} steps x {prompts} prompts x G={group} x {new} new tokens)"
    )
    dis = timed(
        "distill",
        [
            f"teacher={uris['teacher']}",
            f"student={uris['student']}",
            f"dataset={data_uri}",
            "method=kd",
            "kind=reverse",
            "steps=10" if not args.tiny else "steps=2",
            "batch_size=16",
            "n_samples=1",
            f"max_new_tokens={new}",
            "limit=64",
            "checkpoint_every=0",
            f"device={device}",
            f"output={store.join(root, 'student')}",
        ],
    )
    print(
        json.dumps(
            {
                "calibrate": {k: v for k, v in cal.items() if k != "summary"},
                "distill": {k: v for k, v in dis.items() if k != "summary"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
