"""Calibration speed and memory: the two engines of ``calibrate``, native (``dg_core.calibrate.grpo``) and trl
(``dg_core.calibrate.trl_engine``, TRL's ``GRPOTrainer``), as ratios in one run.

Both run the very same settings through the stage's own entry points: zoo teacher + LoRA r16, the same prompts
per step × group, generation length, temperature, KL weight β (reference = adapter off), r_task and r_cal with
the correctness gate, our advantages, plain AdamW, no gradient checkpointing, clipping 1.0. What differs is the
trainer: our loop samples a step's P×G sequences in one generate call and reuses its π₀ pass for r_cal; engine
trl samples each group on its own (seeded by its index in the global batch, so any number of processes draws the
same rollouts) and scores π₀ again for r_cal.

Each engine runs in its own subprocess (so peak memory is its own), interleaved native/trl, one torch thread
each; the first step is dropped and the median step time is reported. Peak memory is CUDA
``max_memory_allocated`` on GPU, else the process's peak RSS.

    .venv/bin/python bench/calibrate.py                   # ~ 2 minutes on CPU
    .venv/bin/python bench/calibrate.py --steps 21 --reps 2 --device cuda
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


def _setup(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from dg_core.data import get_task
    from dg_core.models import load_model

    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=1, term_digits=2)
    examples = task.generate(512, 0)
    device = args.device
    teacher, tok = load_model("zoo:teacher", device=device, dtype="float32")
    proxy, ptok = load_model("zoo:proxy", device=device, dtype="float32")
    for p in list(teacher.parameters()) + list(proxy.parameters()):
        p.requires_grad_(False)
    return task, examples, teacher, tok, proxy, ptok


def _mem_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _mem_peak(device: str) -> float:
    """Peak memory in MiB: CUDA allocator peak, else the process's peak RSS."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(args, engine: str):
    from dg_core.calibrate.grpo import CalibrationSettings

    return CalibrationSettings(
        eta=args.eta,
        beta=args.beta,
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group,
        max_new_tokens=args.max_new_tokens,
        lr=1e-3,
        lora_r=16,
        lora_alpha=32,
        micro_batch=args.prompts * args.group,
        sample_batch=args.prompts * args.group,
        cal_gate="correct",
        eval_every=0,
        loss_agg="token-mean",
        gradient_checkpointing="off",
        engine=engine,
        rollout_unit=args.rollout_unit,
    )


def worker(args, engine: str) -> dict:
    """One engine's run: the same settings, model, rewards and guards; only the trainer differs."""
    from dg_core.calibrate.grpo import make_policy, run_calibration
    from dg_core.calibrate.rewards import CalibrationReward
    from dg_core.calibrate.trl_engine import run_calibration_trl

    task, examples, teacher, tok, proxy, ptok = _setup(args)
    cfg = _settings(args, engine)
    policy, _ = make_policy(teacher, cfg)
    cal = CalibrationReward(policy, tok, [(proxy, ptok)], batch_size=args.prompts * args.group)
    _mem_reset(args.device)
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(step, row):
        if args.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    loop = run_calibration if engine == "native" else run_calibration_trl
    loop(policy, tok, task, examples, cfg, cal_reward=cal, progress=False, on_step=on_step)
    return {"step_times": times, "peak_mib": _mem_peak(args.device)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=9, help="optimizer steps per run (the first is dropped)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--eta", type=float, default=-1.0)
    ap.add_argument("--reps", type=int, default=1, help="interleaved runs of each trainer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--rollout-unit", default="group", choices=["group", "process"], help="engine trl: rollout_unit (see the stage)"
    )
    ap.add_argument("--only", choices=["native", "trl"], help="run one trainer (no ratio), e.g. where TRL is absent")
    ap.add_argument("--worker", choices=["native", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
        out = worker(args, args.worker)
        print("RESULT " + json.dumps(out))
        return 0
    base = [sys.executable, os.path.abspath(__file__)] + [
        a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--worker")
    ]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    results: dict[str, list[dict]] = {"native": [], "trl": []}
    for rep in range(args.reps):
        for who in (args.only,) if args.only else ("native", "trl"):
            t0 = time.perf_counter()
            p = subprocess.run(base + ["--worker", who], capture_output=True, text=True, env=env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode != 0 or line is None:
                print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{who} worker failed (exit {p.returncode})")
            r = json.loads(line[7:])
            results[who].append(r)
            med = statistics.median(r["step_times"][1:])
            print(
                f"rep {rep} {who:<4}: median step {med:.3f}s over {len(r['step_times']) - 1} steps, "
                f"peak {r['peak_mib']:.0f} MiB ({time.perf_counter() - t0:.0f}s wall)",
                flush=True,
            )
    summary = {}
    for who, runs in results.items():
        if not runs:
            continue
        steps = [t for r in runs for t in r["step_times"][1:]]
        summary[who] = {
            "median_step_s": statistics.median(steps),
            "steps_per_s": 1.0 / statistics.median(steps),
            "peak_mib": max(r["peak_mib"] for r in runs),
        }
    if args.only:
        print(json.dumps({"args": vars(args), "summary": summary}))
        return 0
    o, t = summary["native"], summary["trl"]
    print(
        f"\nsetting: zoo teacher + LoRA r16, {args.prompts} prompts x {args.group} completions, "
        f"{args.max_new_tokens} new tokens, beta {args.beta}, eta {args.eta}, device {args.device}, "
        f"{args.threads} thread(s)"
    )
    print(f"native: {o['steps_per_s']:.3f} steps/s, peak {o['peak_mib']:.0f} MiB")
    print(f"trl   : {t['steps_per_s']:.3f} steps/s, peak {t['peak_mib']:.0f} MiB")
    print(
        f"ratio native/trl: speed {o['steps_per_s'] / t['steps_per_s']:.2f}x, "
        f"peak memory {o['peak_mib'] / t['peak_mib']:.2f}x"
    )
    print(json.dumps({"args": vars(args), "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
