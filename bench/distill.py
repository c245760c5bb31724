"""Throughput and peak memory of our `kd` and `gkd` against TRL's GKD trainer, measured in one run.

    .venv/bin/python bench/distill.py [--steps 24] [--batch 16] [--new-tokens 32] [--threads 1]

TRL (``pip install trl==1.16.0``) is a benchmark dependency only. For a fair comparison both sides get the
same teacher and student (zoo models), the same micro-batches (our packing feeds TRL through a collator-shaped
dict), AdamW with the same lr, clipping at 1.0, no gradient checkpointing, the same divergence (generalised
JSD, β = 0.5, TRL's default), the same sampling (T = 1, top-k off, KV cache) and token budget. TRL's ``lmbda``
is a per-step coin flip, so the bench pins it to 0 (off-policy) or 1 (on-policy) and pairs it with our gkd at
the same λ. Our ``kd`` reads stored top-k teacher log-probs instead of running the teacher, so its ratio
against TRL's off-policy step shows what precomputed teacher signals buy.

Steps alternate ours / TRL within one process (one thread), the first step of each is dropped, and the
figures are medians over the rest. tokens/s counts trained response tokens (prompt and padding excluded),
generation time included. Peak memory is the step's peak above the resident set before it (Linux VmHWM reset
through /proc/self/clear_refs, with glibc serving blocks >= 64 KiB by mmap so freed tensors leave the resident
set) on CPU, or torch.cuda.max_memory_allocated above the allocated level before the step on CUDA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


class PeakMem:
    """Peak memory of a code block above its starting level (bytes)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> PeakMem:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _rss_kb("VmRSS:") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _rss_kb("VmHWM:") * 1024 - self.base


def build_world(root: str, n_prompts: int, seed: int = 0) -> dict:
    """Store, dataset (synthetic math), teacher and student refs, and teacher signals with top-k."""
    os.environ["DG_STORE_ROOT"] = f"file://{root}"
    from dg_core.data import get_task
    from dg_core.data.artifact import write_manifest
    from dg_core.data.example import write_jsonl

    d = Path(root) / "dataset"
    d.mkdir(parents=True, exist_ok=True)
    task = get_task("synthetic_math", a_digits=2, b_digits=1, terms=1, term_digits=2)
    write_jsonl(d / "train.jsonl", task.generate(n_prompts, seed=seed))
    write_manifest(d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}}})
    return {"dataset": str(d), "teacher": "zoo:teacher", "student": "zoo:student-llama"}


def make_trl(student, teacher, tok, args, lmbda: float):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    cfg = GKDConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-gkd-"),
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        max_grad_norm=1.0,
        lmbda=lmbda,
        beta=0.5,
        temperature=1.0,
        max_new_tokens=args.new_tokens,
        bf16=False,
        report_to="none",
        gradient_checkpointing=False,
        disable_dropout=True,
        use_cpu=not torch.cuda.is_available(),
        max_length=512,
    )
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=cfg,
        train_dataset=Dataset.from_dict({"x": [0]}),
        processing_class=tok,
        data_collator=lambda rows: rows,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=args.steps)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def trl_inputs(tb, pad: int, device: torch.device) -> dict:
    """Our packed batch in the shape GKDTrainer's collator produces (labels -100 off the response, prompts
    left-padded for generation)."""
    labels = tb.input_ids.clone()
    labels[~tb.response_mask] = -100
    plens = (~tb.response_mask & tb.attention_mask.bool()).sum(1).tolist()
    width = max(plens)
    prompts = torch.full((len(plens), width), pad, dtype=torch.long)
    pmask = torch.zeros_like(prompts)
    for i, n in enumerate(plens):
        prompts[i, width - n :] = tb.input_ids[i, :n]
        pmask[i, width - n :] = 1
    out = {
        "input_ids": tb.input_ids,
        "attention_mask": tb.attention_mask,
        "labels": labels,
        "prompts": prompts,
        "prompt_attention_mask": pmask,
    }
    return {k: v.to(device) for k, v in out.items()}


def trl_step(trainer, inputs: dict) -> int:
    """One TRL optimizer step; returns trained response tokens (counted after on-policy generation)."""
    model = trainer.model
    seen = {}
    orig = trainer.compute_loss

    def counting(model, inputs, return_outputs=False, num_items_in_batch=None):
        seen["tokens"] = int((inputs["labels"][:, 1:] != -100).sum())
        return orig(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    trainer.compute_loss = counting
    try:
        trainer.training_step(model, inputs)
    finally:
        trainer.compute_loss = orig
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad(set_to_none=True)
    return seen["tokens"]


def run_pair(world: dict, args, method: str, lmbda: float) -> dict:
    """Interleave our `method` (at λ) with TRL GKD (at λ): one of ours, then one of theirs, per step."""
    from dg_core.config import from_dict
    from dg_core.data import task_of
    from dg_core.distill import methods, stage
    from dg_core.distill.signals import build_signals, load_signals
    from dg_core.distill.trainer import train
    from dg_core.models import load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, ttok = load_model(world["teacher"], device=str(device))
    teacher.eval()
    ours, stok = load_model(world["student"], device=str(device), dtype="float32")
    theirs, _ = load_model(world["student"], device=str(device), dtype="float32")
    theirs_teacher, _ = load_model(world["teacher"], device=str(device))
    dcfg = from_dict(
        stage.Config,
        {
            "teacher": world["teacher"],
            "dataset": world["dataset"],
            "method": method,
            "topk": args.topk,
            "n_samples": 1,
            "max_new_tokens": args.new_tokens,
            "kind": "jsd",
            "beta": 0.5,
            "lmbda": lmbda,
            "batch_size": args.batch,
            "max_length": 512,
            "steps": args.steps,
            "lr": args.lr,
            "warmup_steps": 0,
            "max_grad_norm": 1.0,
            "seed": 0,
        },
    )
    sig = load_signals(build_signals(dcfg, topk=dcfg.signals_topk(), teacher=(teacher, ttok)))
    task = task_of(world["dataset"])

    def ctx(model: torch.nn.Module, with_teacher: bool) -> methods.Context:
        return methods.Context(
            student=model,
            tok=stok,
            signals=sig,
            task=task,
            train=dcfg,
            teacher=(teacher, ttok) if with_teacher else None,
            teacher_tok=ttok,
            max_new_tokens=args.new_tokens,
        )

    m = methods.build(method, dcfg, ctx(ours, method == "gkd"))
    make_batch, loss_fn = m.make_batch, m.loss
    # TRL sees the same rows: the teacher samples of our (off-policy) batch for the same step.
    same_rows = methods.build("kd" if sig.has_topk else "sft", dcfg, ctx(ours, False)).make_batch
    trainer = make_trl(theirs, theirs_teacher, stok, args, lmbda)
    pad = stok.pad_token_id

    rec = {"ours_s": [], "ours_tok": [], "ours_mem": [], "trl_s": [], "trl_tok": [], "trl_mem": []}
    state = {"t": None, "tok": 0, "mem": None}

    def counting_loss(model, batch):
        out = loss_fn(model, batch)
        state["tok"] += out.n_tokens
        return out

    def start_ours() -> None:
        state["mem"] = PeakMem(device).__enter__()
        state["tok"] = 0
        state["t"] = time.perf_counter()

    def after_ours(step: int, loss: float) -> None:
        dt = time.perf_counter() - state["t"]
        state["mem"].__exit__(None, None, None)
        rec["ours_s"].append(dt)
        rec["ours_tok"].append(state["tok"])
        rec["ours_mem"].append(state["mem"].peak)
        inputs = trl_inputs(same_rows(step - 1, 0).tokens, pad, device)
        with PeakMem(device) as pm:
            t0 = time.perf_counter()
            n = trl_step(trainer, inputs)
            dt = time.perf_counter() - t0
        rec["trl_s"].append(dt)
        rec["trl_tok"].append(n)
        rec["trl_mem"].append(pm.peak)
        start_ours()

    start_ours()
    train(ours, make_batch, counting_loss, dcfg, stage="bench", progress=False, on_step=after_ours)

    def summary(side: str) -> dict:
        s, tok, mem = rec[f"{side}_s"][1:], rec[f"{side}_tok"][1:], rec[f"{side}_mem"][1:]
        return {
            "tokens_per_s": statistics.median(t / x for t, x in zip(tok, s)),
            "step_s": statistics.median(s),
            "peak_mem_mb": statistics.median(mem) / 2**20,
            "tokens_per_step": statistics.median(tok),
        }

    return {"ours": summary("ours"), "trl": summary("trl")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--topk", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if not torch.cuda.is_available() and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # Large blocks through mmap go back to the OS when freed, so a step's peak RSS reflects its own tensors
        # rather than what glibc's heap kept from earlier steps. Must be set before the process starts.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.steps < 21:
        p.error("--steps must be >= 21 (the first step is dropped; medians over >= 20)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    device = "cuda" if torch.cuda.is_available() else f"cpu ({args.threads} thread)"
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as root:
        world = build_world(root, n_prompts=max(64, args.batch * 4))
        rows = [
            ("kd (stored top-k)  vs TRL GKD λ=0", "kd", 0.0),
            ("gkd λ=0 (off-pol.) vs TRL GKD λ=0", "gkd", 0.0),
            ("gkd λ=1 (on-pol.)  vs TRL GKD λ=1", "gkd", 1.0),
        ]
        print(
            f"device: {device}; batch {args.batch}, {args.new_tokens} new tokens, {args.steps} steps "
            f"(first dropped, medians); teacher {world['teacher']}, student {world['student']}"
        )
        print(
            f"{'pair':36} {'ours tok/s':>10} {'TRL tok/s':>10} {'ratio':>6} | {'ours MB':>8} {'TRL MB':>8} {'ratio':>6}"
        )
        for label, method, lmbda in rows:
            r = run_pair(world, args, method, lmbda)
            o, t = r["ours"], r["trl"]
            print(
                f"{label:36} {o['tokens_per_s']:10.0f} {t['tokens_per_s']:10.0f} "
                f"{o['tokens_per_s'] / t['tokens_per_s']:6.2f} | {o['peak_mem_mb']:8.1f} {t['peak_mem_mb']:8.1f} "
                f"{(o['peak_mem_mb'] / t['peak_mem_mb']) if t['peak_mem_mb'] > 0 else float('nan'):6.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
