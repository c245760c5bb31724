"""GPU scale figures: rollout tokens/s with vLLM vs HF generate, calibrate step time and peak memory.

For each shape (random weights, nothing downloaded): a Qwen2.5-0.5B-shaped and a Qwen3-8B-shaped model are built
on the GPU and saved as a plain HF folder; then, each in its own process (so one engine's memory never counts
against the next):

- ``hf``: transformers ``generate``, P prompts x G=8 samples x 256 new tokens (EOS ignored: every sequence is
  full length), tokens/s and peak GPU memory;
- ``vllm``: the same with vLLM (colocated-style: ``gpu_memory_utilization`` = ``--vllm-memory``); skipped with one
  line when vllm is not installed;
- ``calibrate``: the calibrate stage (LoRA, bf16, HF generation: the engine the stage uses today) for a few steps,
  seconds per step and peak GPU memory.

Prints one line per figure and a JSON summary at the end. Not a test.

    bash bench/gpu_smoke.sh --rollout                      # both shapes, everything (about 8-10 min on one H200)
    bash bench/gpu_smoke.sh --rollout --shapes qwen3-8b    # one shape
    bash bench/gpu_smoke.sh --rollout --tiny               # tiny shape on CPU: checks the script, measures nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

#: (architecture, layers, hidden, heads, kv heads, intermediate, vocab, head_dim)
SHAPES = {
    "qwen2.5-0.5b": ("qwen2", 24, 896, 14, 2, 4864, 151936, 64),
    "qwen3-8b": ("qwen3", 36, 4096, 32, 8, 12288, 151936, 128),
    "tiny": ("qwen2", 2, 64, 4, 2, 128, 1024, 16),
}


def build(shape: str, out: Path, device: str) -> int:
    """A random-weight model of ``shape`` saved as a plain HF folder (with the zoo's byte-level BPE tokenizer)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from dg_core.models.zoo import build_tokenizer

    arch, layers, hidden, heads, kv, inter, vocab, head_dim = SHAPES[shape]
    tok = build_tokenizer("bpe")
    cfg_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if arch == "qwen3" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = cfg_cls(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        head_dim=head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=arch == "qwen2",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device(device):  # an 8B model initialises in seconds on the GPU, minutes on the CPU
        model = model_cls(cfg).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def prompts(n: int) -> list[str]:
    return [f"Question {i}: what is {i} + {2 * i + 1}? Answer:" for i in range(n)]


def _peak() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def run_hf(model_dir: str, n_prompts: int, group: int, new: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if dev == "cuda" else None).to(dev)
    batch = tok(prompts(n_prompts), return_tensors="pt", padding=True).to(dev)
    kw = dict(do_sample=True, temperature=1.0, num_return_sequences=group, pad_token_id=tok.pad_token_id)
    model.generate(**batch, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = model.generate(**batch, max_new_tokens=new, min_new_tokens=new, **kw)
    if dev == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    tokens = int(out.shape[0]) * (int(out.shape[1]) - int(batch["input_ids"].shape[1]))
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "peak_gib": _peak()}


def run_vllm(model_dir: str, n_prompts: int, group: int, new: int, memory: float) -> dict:
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        return {"skipped": "vllm is not installed (pip install the `vllm` extra / use the CUDA image)"}
    llm = LLM(model=model_dir, dtype="bfloat16", gpu_memory_utilization=memory, max_model_len=1024, seed=0)
    sp = SamplingParams(n=group, temperature=1.0, max_tokens=new, min_tokens=new, ignore_eos=True)
    llm.generate(prompts(2), SamplingParams(n=group, max_tokens=8, min_tokens=8, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts(n_prompts), sp)
    wall = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    free, total = torch.cuda.mem_get_info()
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "used_gib": (total - free) / 2**30}


def run_calibrate(model_dir: str, steps: int, group: int, n_prompts: int, new: int) -> dict:
    from dg_core import store
    from dg_core.cli import run_stage

    root = f"file://{tempfile.mkdtemp(prefix='dg-bench-cal-')}"
    os.environ["DG_STORE_ROOT"] = root
    data = store.join(root, "data")
    run_stage("prep", None, ["source=synthetic", "task=synthetic_math", "n=200", f"output={data}"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_stage(
        "calibrate",
        None,
        [f"teacher={model_dir}", "proxies=[zoo:proxy]", f"dataset={data}", f"steps={steps}", f"group_size={group}",
         f"prompts_per_step={n_prompts}", f"max_new_tokens={new}", "eval_every=0", "eval_n=16", "sampled_k=1",
         "preflight_accuracy=0", "stop_accuracy_ratio=0", "min_retention=0", "checkpoint_every=0", f"device={dev}",
         "progress=false", "eta=-1", "cal_gate=none", "allow_zoo=true", f"output={store.join(root, 'cal')}"],
    )  # fmt: skip
    wall = time.perf_counter() - t0
    return {"steps": steps, "wall_s": wall, "s_per_step_upper": wall / steps, "peak_gib": _peak()}


def child(args: argparse.Namespace) -> None:
    if args.one == "hf":
        res = run_hf(args.model_dir, args.prompts, args.group, args.new_tokens)
    elif args.one == "vllm":
        res = run_vllm(args.model_dir, args.prompts, args.group, args.new_tokens, args.vllm_memory)
    else:
        res = run_calibrate(args.model_dir, args.cal_steps, args.group, args.cal_prompts, args.cal_new_tokens)
    print("RESULT " + json.dumps(res), flush=True)


def spawn(what: str, model_dir: Path, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--one", what, "--model-dir", str(model_dir), "--prompts", str(args.prompts),
           "--group", str(args.group), "--new-tokens", str(args.new_tokens), "--vllm-memory", str(args.vllm_memory),
           "--cal-steps", str(args.cal_steps), "--cal-prompts", str(args.cal_prompts),
           "--cal-new-tokens", str(args.cal_new_tokens)]  # fmt: skip
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
        return {"error": f"exit {p.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shape on CPU: checks the script, measures nothing")
    ap.add_argument("--shapes", default="qwen2.5-0.5b,qwen3-8b")
    ap.add_argument("--what", default="hf,vllm,calibrate")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per rollout batch (x G samples each)")
    ap.add_argument("--group", type=int, default=8, help="G: samples per prompt")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--vllm-memory", type=float, default=0.5, help="vLLM gpu_memory_utilization (colocated)")
    ap.add_argument("--cal-steps", type=int, default=2)
    ap.add_argument("--cal-prompts", type=int, default=8)
    ap.add_argument("--cal-new-tokens", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per measurement")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        return child(args)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_rollout: no CUDA device; use --tiny to check the script on CPU")
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    if args.tiny:
        args.prompts, args.new_tokens, args.cal_prompts, args.cal_new_tokens = 2, 8, 2, 8
    if device == "cuda":
        print(
            f"device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
        )
    results: dict = {}
    for shape in shapes:
        d = Path(tempfile.mkdtemp(prefix=f"dg-bench-{shape}-"))
        t0 = time.perf_counter()
        n = build(shape, d, device)
        print(f"[{shape}] built {n / 1e9:.2f}B params in {time.perf_counter() - t0:.0f}s -> {d}")
        res = results[shape] = {"params_b": n / 1e9}
        for what in args.what.split(","):
            r = res[what] = spawn(what, d, args, args.timeout)
            print(f"[{shape}] {what}: {json.dumps(r)}", flush=True)
        hf, vl = res.get("hf", {}), res.get("vllm", {})
        if "tokens_per_s" in hf and "tokens_per_s" in vl:
            res["vllm_over_hf"] = vl["tokens_per_s"] / hf["tokens_per_s"]
            print(f"[{shape}] vLLM / HF generate rollout tokens/s: {res['vllm_over_hf']:.1f}x (target >= 5x)")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
