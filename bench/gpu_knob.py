"""The knob sweep at scale on one GPU: bench/knob.yaml's experiment with a 20M-parameter teacher instead of 0.8M.

The same settings as ``bench/knob.py`` (``pipelines/experiments/demo.yaml`` + ``bench/knob.yaml``, with
``bench/gpu-knob.yaml``: the teacher's learning rate, two etas, the held-out attacker added), the same
stage code (``dg_core.runner.run_stage``: prep, train, evaluate, calibrate, distill) and the same gate
(``dg_core.gate.decide``); only the teacher is a zoo-shaped teacher 25x larger (llama, the zoo's character
tokenizer, 512 hidden x 6 layers) and every stage runs on CUDA. The KFP wrappers are left out: a GPU image need not
carry kfp, and they add nothing to what scale can change. Tasks run ``--workers`` at a time, each in its own
process sharing the one GPU (the models are small: launch-bound work overlaps). Whatever is done by
``--deadline`` seconds is summarised; a task not started by then is skipped and named.

    python bench/gpu_knob.py --tiny --out /tmp/gpu-knob-tiny       # CPU, tiny settings: checks the script
    python bench/gpu_knob.py --out /tmp/gpu-knob --workers 10 --threads 1 --deadline 320   # one GPU (not yet run)

On a lent device (no kfp, minio or datasets needed; the image's torch): carry this project's transformers and peft
as wheels (``.whl``, see the device notes), ``pip install --target /tmp/site .whl/*.whl``, ``PYTHONPATH=/tmp/site``,
then the line above under ``timeout 480``; the deadline leaves the started students time to finish in one call.

Prints the table (teacher accuracy and retention per eta, each attack's accuracy and transfer with seeds) and the
gate of each eta with the knob's targets; writes ``gpu_knob.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dg_core.errors import DGError  # noqa: E402
from pipelines.experiment import EXPERIMENTS, load_settings  # noqa: E402

#: the scaled teacher: the zoo teacher's family and tokenizer, 20.4M parameters (the zoo's is 0.8M)
TEACHER_20M = {"arch": "llama", "tokenizer": "char", "hidden": 512, "layers": 6, "heads": 8, "intermediate": 1536}
TINY_TEACHER = {"arch": "llama", "tokenizer": "char", "hidden": 128, "layers": 4, "heads": 4, "intermediate": 384}

TINY = {  # a few steps of every stage on CPU, scored on a memorised train split (the script's own check)
    "prep": {"options": {"n": 64}},
    "teacher": {"train": {"steps": 300, "batch_size": 32, "warmup_steps": 10, "checkpoint_every": 0}},
    "proxy": {"train": {"steps": 20, "checkpoint_every": 0}},
    "etas": [-0.5, 0.5],
    "calibrate": {
        "steps": 2,
        "prompts_per_step": 2,
        "group_size": 2,
        "eval_every": 0,
        "eval_n": 16,
        "sampled_k": 1,
        "preflight_accuracy": 0.0,
        "checkpoint_every": 0,
        "eval_split": "train",
    },  # fmt: skip
    "evaluate": {"limit": 16, "split": "train"},
    "attacks": [{"student": "zoo:student-llama", "method": "sft", "seeds": [0, 1]}],
    "distill": {"steps": 4, "limit": 16, "batch_size": 8},
}


def stage_values(section: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """A settings section as stage Config values: its ``options`` folded in (the experiment's component split)."""
    values = {k: v for k, v in section.items() if k not in ("options", "train", "model", "threads")}
    return {**values, **(section.get("options") or {}), **fixed}


# --------------------------------------------------------------------------------------------- worker side


def _init(store_root: str, threads: int) -> None:
    os.environ.update({"DG_STORE_ROOT": store_root, "DG_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                       "TQDM_DISABLE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"})  # fmt: skip
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)


def _stage(name: str, values: dict[str, Any]) -> dict[str, Any]:
    from dg_core.runner import run_stage

    t0 = time.perf_counter()
    out = run_stage(name, values)
    out["_seconds"] = time.perf_counter() - t0
    return out


def job_build(shape: dict[str, Any], uri: str) -> dict[str, Any]:
    from dg_core.models import save_model
    from dg_core.models.zoo import ZooMember, build_model, build_tokenizer

    spec = ZooMember(**shape, seed=1, role="scaled zoo teacher (bench/gpu_knob.py)")
    tok = build_tokenizer(spec.tokenizer, spec.vocab_size)
    model = build_model(spec, tok)
    save_model(model, tok, uri, metadata={"role": spec.role})
    return {"model": uri, "params": sum(p.numel() for p in model.parameters())}


def job_train(section: dict[str, Any], model: str, dataset: str, device: str) -> dict[str, Any]:
    s = _stage("train", {**section, "model": model, "dataset": dataset, "device": device})
    return {"model": s["model"], "seconds": s["_seconds"]}


def job_eval(cfg: dict[str, Any], model: str, dataset: str, device: str, label: dict[str, Any]) -> dict[str, Any]:
    s = _stage("evaluate", stage_values(cfg["evaluate"], model=model, dataset=dataset, device=device, label=label))
    return {"record": s["record"], "seconds": s["_seconds"]}


def job_calibrate(cfg: dict, teacher: str, proxy: str, dataset: str, eta: float, device: str) -> dict[str, Any]:
    values = stage_values(cfg["calibrate"], teacher=teacher, proxies=[proxy], dataset=dataset, eta=eta,
                          device=device, allow_zoo=True, progress=False)  # fmt: skip
    s = _stage("calibrate", values)
    if not s.get("model"):
        raise DGError(f"calibration eta={eta:+g} refused the teacher: {s.get('reason')}")
    rec = job_eval(cfg, s["model"], dataset, device, {"model": "teacher", "teacher": "calibrated"})
    return {"model": s["model"], "record": rec["record"], "seconds": s["_seconds"] + rec["seconds"],
            "card": s.get("card"), "status": s.get("status")}  # fmt: skip


def job_attack(cfg: dict, job: Any, teacher: str, side: str, dataset: str, device: str) -> dict[str, Any]:
    values = {**job.settings, "teacher": teacher, "dataset": dataset, "seed": job.seed, "device": device,
              "allow_zoo": True}  # fmt: skip
    s = _stage("distill", values)
    label = {"model": "student", "teacher": side, "student": job.student, "method": job.method, "seed": job.seed}
    rec = job_eval(cfg, s["model"], dataset, device, label)
    return {"record": {**rec["record"], "attack": job.attack}, "seconds": s["_seconds"] + rec["seconds"]}


# --------------------------------------------------------------------------------------------- scheduler


def run(cfg: dict[str, Any], root: str, device: str, workers: int, threads: int, deadline: float, tiny: bool) -> dict:
    from dg_core.distill.suite import plan_attacks
    from dg_core.runner import run_stage

    t_start = time.monotonic()
    _init(root, threads)
    from dg_core import store

    dataset = run_stage("prep", stage_values(cfg["prep"], output=store.join(root, "data", "knob")))["uri"]
    jobs = plan_attacks(cfg["attacks"], cfg.get("distill"))
    jobs.sort(key=lambda j: (j.seed, j.attack))  # every attack's seed 0 first: a cut-off run still covers them all
    teacher_uri = store.join(root, "models", "teacher-20m")
    results: dict[str, Any] = {"skipped": [], "failed": {}}

    ctx = mp.get_context("spawn")  # CUDA in children needs spawn
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(root, threads))
    running: dict[Any, str] = {}
    done: dict[str, dict[str, Any]] = {}
    pending: list[tuple[str, list[str], Any]] = []  # (name, needs, fn(done) -> (callable, args))

    def add(name: str, needs: list[str], make: Any) -> None:
        pending.append((name, needs, make))

    add("build", [], lambda d: (job_build, (TINY_TEACHER if tiny else TEACHER_20M, teacher_uri)))
    add("teacher", ["build"], lambda d: (job_train, (cfg["teacher"]["train"], teacher_uri, dataset, device)))
    add("proxy", [], lambda d: (job_train, (cfg["proxy"]["train"], cfg["proxy"]["model"], dataset, device)))
    add("eval/original", ["teacher"],
        lambda d: (job_eval, (cfg, d["teacher"]["model"], dataset, device, {"model": "teacher", "teacher": "original"})))  # fmt: skip
    for eta in cfg["etas"]:
        add(f"calibrate/{eta:+g}", ["teacher", "proxy"],
            lambda d, eta=eta: (job_calibrate, (cfg, d["teacher"]["model"], d["proxy"]["model"], dataset, eta, device)))  # fmt: skip
    for j in jobs:
        sides = [("original", "teacher")] + [(f"{eta:+g}", f"calibrate/{eta:+g}") for eta in cfg["etas"]]
        for side, need in sides:
            label = "original" if side == "original" else "calibrated"
            add(f"attack/{side}/{j.attack}/{j.seed}", [need],
                lambda d, j=j, need=need, label=label: (job_attack, (cfg, j, d[need]["model"], label, dataset, device)))  # fmt: skip
    # the order of `pending` is the priority: teachers first, then attacks seed by seed

    while pending or running:
        now = time.monotonic() - t_start
        for item in list(pending):
            name, needs, make = item
            if any(n in results["failed"] or n in results["skipped"] for n in needs):
                pending.remove(item)
                results["skipped"].append(name)
                continue
            if len(running) >= workers or not all(n in done for n in needs):
                continue
            if now > deadline:
                pending.remove(item)
                results["skipped"].append(name)
                continue
            fn, args = make(done)
            running[pool.submit(fn, *args)] = name
            pending.remove(item)
            print(f"[{now:6.0f}s] start {name}", flush=True)
        if not running:
            if pending:  # waiting on nothing that runs: everything left depends on a skipped or failed task
                for name, _, _ in pending:
                    results["skipped"].append(name)
                pending.clear()
            break
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for f in finished:
            name = running.pop(f)
            now = time.monotonic() - t_start
            try:
                done[name] = f.result()
                secs = done[name].get("seconds")
                extra = f" acc {done[name]['record']['accuracy']:.3f}" if "record" in done[name] else ""
                print(f"[{now:6.0f}s] done  {name}{extra}" + (f" ({secs:.0f}s)" if secs else ""), flush=True)
            except Exception as e:  # a task's failure is reported and its dependants skipped, the rest go on
                results["failed"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                print(f"[{now:6.0f}s] FAILED {name}: {results['failed'][name]}", flush=True)
    pool.shutdown()
    results["tasks"] = done
    results["wall_s"] = time.monotonic() - t_start
    return results


def judge(cfg: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    """Per eta, the gate's decision with the knob's targets (eta < 0 undistillable, > 0 distillable)."""
    from dg_core import gate
    from dg_core.knob import direction_of

    t = res["tasks"]
    original = [t["eval/original"]["record"]] if "eval/original" in t else []
    out = {}
    for eta in cfg["etas"]:
        key = f"{eta:+g}"
        if f"calibrate/{key}" not in t:
            continue
        recs = original + [t[f"calibrate/{key}"]["record"]]
        for name, v in t.items():
            side = name.split("/")[1] if name.startswith("attack/") else None
            if side in ("original", key):
                recs.append(v["record"])
        out[key] = gate.decide(recs, direction=direction_of(eta), **cfg["gate"])
    return out


def table(res: dict[str, Any], gates: dict[str, Any]) -> list[str]:
    t = res["tasks"]
    lines = []
    orig = t.get("eval/original", {}).get("record", {}).get("accuracy")
    lines.append(f"original teacher: {orig}")
    for key, g in gates.items():
        lines.append(
            f"eta {key}: teacher {g['teacher']['calibrated']:.3f}, retention "
            + ("undefined" if g["retention"] is None else f"{g['retention']:.3f}")
            + "; "
            f"gate {'PASSED' if g['passed'] else 'FAILED'} ({g['direction']})"
        )
        for name, a in g["attacks"].items():
            tr = a.get("transfer")
            ci = a.get("transfer_95")
            lines.append(
                f"    {name:24s} orig {a['acc_original'] or 0:.3f} cal {a['acc_calibrated'] or 0:.3f} "
                f"transfer {tr if tr is None else f'{tr:.2f}'}"
                + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
                + f" seeds {a['seeds']['original']}/{a['seeds']['calibrated']}"
            )
        lines.append("    " + "; ".join(g["reasons"]))
    return lines


def settings(overrides: list[str] = (), tiny: bool = False) -> dict[str, Any]:
    """demo.yaml + knob.yaml + gpu-knob.yaml, then ``key.sub=JSON`` overrides; ``tiny`` shrinks every stage."""
    from pipelines.experiment import _merge

    files = [EXPERIMENTS / "demo.yaml", ROOT / "bench" / "knob.yaml", ROOT / "bench" / "gpu-knob.yaml"]
    cfg = load_settings(*files, overrides=overrides)
    return _merge(cfg, TINY) if tiny else cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/gpu-knob", help="store and gpu_knob.json go here")
    ap.add_argument("--tiny", action="store_true", help="tiny settings on CPU: checks the script, measures nothing")
    ap.add_argument("--workers", type=int, default=8, help="tasks side by side, each its own process on the GPU")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per task")
    ap.add_argument("--deadline", type=float, default=420, help="seconds after which no new task starts")
    ap.add_argument("overrides", nargs="*", help="settings as key.sub=JSON (over demo + knob + gpu-knob.yaml)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.tiny else "cuda"
    import torch
    import transformers

    where = {"device": "cpu", "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        cfg = settings(args.overrides, args.tiny)
        if device == "cuda":
            if not torch.cuda.is_available():
                raise DGError("gpu_knob: no CUDA device; use --tiny to check the script on CPU")
            where["device"] = torch.cuda.get_device_name(0)
        print(f"machine: {where}", flush=True)
        res = run(cfg, (out / "store").resolve().as_uri(), device, args.workers, args.threads, args.deadline,
                  args.tiny)  # fmt: skip
        gates = judge(cfg, res)
    except DGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines = table(res, gates)
    print("\n".join(lines))
    tasks = {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in res["tasks"].items()}
    print(f"wall {res['wall_s']:.0f}s; skipped {len(res['skipped'])}: {res['skipped']}; failed: {res['failed']}")
    (out / "gpu_knob.json").write_text(
        json.dumps(
            {
                "machine": where,
                "settings": cfg,
                "tasks": tasks,
                "gates": gates,
                "skipped": res["skipped"],
                "failed": res["failed"],
                "wall_s": res["wall_s"],
                "table": lines,
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
