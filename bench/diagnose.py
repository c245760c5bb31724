"""Benchmark: chunked vs naive full-vocabulary token KL (dg_core.base.kl), throughput and peak memory.

Both compute the same per-position divergence between teacher and student logits ``[N, V]``:

- naive:   ``log_softmax`` of both full tensors, the elementwise term, a sum: several ``[N, V]`` float32
           temporaries live at once (what a loss written in three lines does);
- chunked: :func:`dg_core.base.kl.token_divergence`, ``chunk_rows`` positions at a time (auto-sized to
           ``--max-chunk-elems``), optionally ``--vocab-chunk`` columns at a time; with ``--backward`` each chunk
           is recomputed in the backward pass (checkpointing), as when the function is a KD loss.

Figures: positions (tokens) per second, median over ``--reps`` timed runs after one warm-up (variants
interleaved round-robin in one process, so load changes on a shared machine hit all alike), and the peak
memory *beyond the inputs* (with ``--backward`` this includes the student's ``[N, V]`` gradient, the same for
every variant; the header prints its size). On CPU every variant runs in its own
subprocess and peak memory is the growth of the process's max RSS; on CUDA it is
``torch.cuda.max_memory_allocated`` above the inputs. Usage::

    .venv/bin/python bench/diagnose.py [--positions 2048] [--vocab 32000] [--kind reverse] [--backward]
    python3 bench/diagnose.py --device cuda --positions 16384 --vocab 151936      # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dg_core.base import kl  # noqa: E402

VARIANTS = ("naive", "chunked", "chunked_vocab")


def naive(t: torch.Tensor, s: torch.Tensor, kind: str) -> torch.Tensor:
    """The straightforward full-vocabulary version (the reference both variants must agree with)."""
    lp, lq = torch.log_softmax(t.float(), -1), torch.log_softmax(s.float(), -1)
    if kind == "forward":
        return (lp.exp() * (lp - lq)).sum(-1)
    if kind == "reverse":
        return (lq.exp() * (lq - lp)).sum(-1)
    return kl.elementwise_terms(lp, lq, kind).sum(-1)


def compute(variant: str, t: torch.Tensor, s: torch.Tensor, args) -> torch.Tensor:
    if variant == "naive":
        return naive(t, s, args.kind)
    vocab_chunk = args.vocab_chunk if variant == "chunked_vocab" else None
    return kl.token_divergence(t, s, args.kind, max_chunk_elems=args.max_chunk_elems, vocab_chunk=vocab_chunk)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _inputs(args) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits made in place (no temporaries, which would raise the memory high-water mark early)."""
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    t = torch.empty(args.positions, args.vocab, device=device, dtype=dtype).normal_(0.0, 3.0, generator=gen)
    s = torch.empty(args.positions, args.vocab, device=device, dtype=dtype).normal_(0.0, 3.0, generator=gen)
    if args.backward:
        s.requires_grad_(True)  # the student's gradient ([N, V], same for every variant) counts in the peak
    return t, s


def _step(variant: str, t: torch.Tensor, s: torch.Tensor, args) -> torch.Tensor:
    out = compute(variant, t, s, args)
    if args.backward:
        out.mean().backward()
        s.grad = None
    return out


def peak_memory(variant: str, args) -> float:
    """Bytes allocated beyond the inputs during one call (CUDA allocator, or growth of this process's max RSS)."""
    device = torch.device(args.device)
    t, s = _inputs(args)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _step(variant, t, s, args)
    _sync(device)
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated() - base)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)


def timings(variants: list[str], args) -> dict[str, dict]:
    """Median seconds per call, variants interleaved round-robin so load changes hit all of them alike."""
    device = torch.device(args.device)
    t, s = _inputs(args)
    times: dict[str, list[float]] = {v: [] for v in variants}
    outs = {}
    for v in variants:  # warm-up
        outs[v] = _step(v, t, s, args).detach()
    _sync(device)
    for _ in range(args.reps):
        for v in variants:
            t0 = time.perf_counter()
            _step(v, t, s, args)
            _sync(device)
            times[v].append(time.perf_counter() - t0)
    ref = naive(t.detach(), s.detach(), args.kind) if args.check else None
    res = {}
    for v in variants:
        med = statistics.median(times[v])
        err = float((outs[v].float() - ref.float()).abs().max()) if ref is not None else None
        res[v] = {"positions_per_s": args.positions / med, "ms_per_call": med * 1e3, "max_abs_diff_vs_naive": err}
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--positions", type=int, default=2048, help="token positions N (batch x sequence)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size V")
    p.add_argument("--kind", default="reverse", choices=kl.KINDS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="dtype of the logits")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is stable on a shared machine)")
    p.add_argument("--backward", action="store_true", help="time forward + backward (the KD-loss use)")
    p.add_argument("--max-chunk-elems", type=int, default=None, help="chunk budget (default: kl's per-device one)")
    p.add_argument("--vocab-chunk", type=int, default=8192)
    p.add_argument("--check", action="store_true", help="also report the max difference to the naive result")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--child-mem", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_mem:
        print(json.dumps({"peak": peak_memory(args.child_mem, args)}))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    peaks = {}
    for v in variants:
        if args.device == "cpu":  # a fresh process per variant: max RSS is a per-process high-water mark
            # a fixed mmap threshold returns freed temporaries to the OS, so RSS tracks live memory
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child-mem", v]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            peaks[v] = json.loads(res.stdout.strip().splitlines()[-1])["peak"]
        else:
            peaks[v] = peak_memory(v, args)
            torch.cuda.empty_cache()
    rows = timings(variants, args)
    inputs_mb = 2 * args.positions * args.vocab * (4 if args.dtype == "float32" else 2) / 1e6
    where = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(
        f"token {args.kind} KL, N={args.positions} positions, V={args.vocab}, {args.dtype} on {args.device}{where}, "
        f"threads={args.threads}, {'forward+backward' if args.backward else 'forward'}, inputs {inputs_mb:.0f} MB"
        f"{f', student gradient {inputs_mb / 2:.0f} MB' if args.backward else ''}, median of {args.reps}, "
        f"chunk_rows={kl.auto_chunk_rows(args.vocab, args.max_chunk_elems, args.device)}"
    )
    print(f"{'variant':<14} {'tokens/s':>12} {'ms/call':>10} {'peak extra MB':>14} {'max|diff|':>10}")
    for v in variants:
        r = rows[v]
        diff = "" if r["max_abs_diff_vs_naive"] is None else f"{r['max_abs_diff_vs_naive']:.2e}"
        print(f"{v:<14} {r['positions_per_s']:>12.0f} {r['ms_per_call']:>10.1f} {peaks[v] / 1e6:>14.1f} {diff:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
