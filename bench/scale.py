"""Distillation throughput in 1 vs N processes (torchrun; gloo on CPU, NCCL on GPUs): steps/s, tokens/s and
parallel efficiency at the same global batch. Prints figures; not a test.

    python bench/scale.py                      # CPU: 1 vs 2 processes, kd on the zoo, 1 thread per process
    python bench/scale.py --device cuda --procs 1 2 4 --student <ref> --teacher <ref>

Each run is one `dguard distill` launch; the figures come from its summary (the training loop only: ``seconds``
excludes start-up, model loading and the teacher signals, which the first run builds and the others reuse).
Efficiency = tokens/s with N processes / (N x tokens/s with one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dataset(d: Path, n: int) -> str:
    from dg_core.data import get_task
    from dg_core.data.artifact import write_manifest
    from dg_core.data.example import write_jsonl

    task = get_task("synthetic_math", a_digits=2, b_digits=1, terms=0)
    ex = task.generate(n + 4, seed=0)
    write_jsonl(d / "train.jsonl", ex[:n])
    write_jsonl(d / "test.jsonl", ex[n:])
    write_manifest(
        d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}, "test": {"file": "test.jsonl"}}}
    )
    return str(d)


def launch(procs: int, args: argparse.Namespace, ds: str, env: dict[str, str], out: str) -> dict:
    fields = {
        "teacher": args.teacher,
        "student": args.student,
        "dataset": ds,
        "method": args.method,
        "reinit": "true",
        "steps": args.steps,
        "batch_size": args.batch // procs,
        "max_new_tokens": args.new_tokens,
        "checkpoint_every": 0,
        "device": args.device,
        "allow_zoo": "true",
        "output": out,
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    cmd += ["-m", "dg_core.cli", "distill", *(f"{k}={v}" for k, v in fields.items())]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        sys.exit(f"{procs} processes failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--method", default="kd")
    ap.add_argument("--teacher", default="zoo:student-llama")
    ap.add_argument("--student", default="zoo:student-llama")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16, help="global batch (split evenly over the processes)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    args = ap.parse_args()
    if any(args.batch % n for n in args.procs):
        sys.exit(f"--batch {args.batch} must divide evenly over {args.procs} processes")
    with tempfile.TemporaryDirectory(prefix="dg-scale-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "DG_STORE_ROOT": f"file://{root / 'store'}", "HF_HUB_OFFLINE": "1"}
        env.update(OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
        os.environ.update({k: env[k] for k in ("DG_STORE_ROOT", "HF_HUB_OFFLINE")})
        (root / "ds").mkdir()
        ds = dataset(root / "ds", args.prompts)
        launch(1, argparse.Namespace(**{**vars(args), "steps": 1}), ds, env, f"file://{root}/warm")  # signals, zoo
        rows = []
        for n in args.procs:
            r = launch(n, args, ds, env, f"file://{root}/p{n}")
            rows.append((n, args.steps / r["seconds"], r["tokens_per_s"], r["final_loss"]))
    base = rows[0][2] / rows[0][0]
    print(
        f"distill {args.method}, {args.device}, global batch {args.batch}, {args.steps} steps, {args.threads} thread(s)"
    )
    print(f"{'procs':>5} {'steps/s':>8} {'tokens/s':>9} {'speed-up':>8} {'efficiency':>10} {'final loss':>10}")
    for n, sps, tps, loss in rows:
        print(f"{n:>5} {sps:>8.2f} {tps:>9.0f} {tps / rows[0][2]:>8.2f} {tps / (n * base):>10.2f} {loss:>10.4f}")


if __name__ == "__main__":
    main()
