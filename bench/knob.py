"""The proof that the knob turns: calibrate a zoo teacher over an η sweep and attack every teacher with students.

On the offline ``synthetic_math`` family (several solution styles that differ in how hard they are for a small
student), with zoo models:

1. data: a prepared dataset artifact (train / validation / test), references drawn from every style;
2. bootstrap: SFT the zoo teacher on every style of every training problem (compressed weighted double: a
   teacher that answers half the prompts with the bare answer), so that it keeps a per-prompt *choice* of style
   for calibration to reshape, and the zoo proxy (another architecture and tokenizer) on every style equally;
3. calibrate the teacher for each η (stage ``calibrate``; processes in parallel);
4. attack the original and every calibrated teacher: each (student, method) × seed distils a student from the
   teacher's outputs (stage ``distill``) and evaluates it greedily on the test split; ``student-gpt2`` has
   another architecture and tokenizer than the proxy;
5. print the table — teacher retention, student transfer per student/method (mean ± spread over seeds) — and
   save the trade-off plot (retention vs transfer per η) as PNG, plus ``knob.json``.

Every step's output is published to the store and reused when present, so a re-run resumes where it stopped.

    .venv/bin/python bench/knob.py --small                       # plumbing check, a few minutes
    nohup .venv/bin/python bench/knob.py --workers 2 > /tmp/knob.log 2>&1 &    # the full sweep (long)

Targets (issue #6): undistillable retention >= 0.95 and transfer <= 0.5 for every student/method; distillable
transfer >= 1.10; eta = 0 changes little.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT_DEFAULT = "file:///tmp/dg-knob/store"


# --------------------------------------------------------------------------------------------- jobs
# Each job runs in its own process (spawned): one torch thread, the bench's store root.


def _init(root: str, threads: int) -> None:
    os.environ["DG_STORE_ROOT"] = root
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DG_THREADS"] = str(threads)
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import torch

    torch.set_num_threads(threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def job_train(root: str, threads: int, params: dict[str, Any]) -> dict[str, Any]:
    _init(root, threads)
    from dg_core.config import from_dict
    from dg_core.distill import train_stage

    t0 = time.perf_counter()
    out = train_stage.run(from_dict(train_stage.Config, {**params, "device": "cpu"}))
    return {"model": out["model"], "reused": out.get("reused", False), "seconds": time.perf_counter() - t0}


def job_eval(root: str, threads: int, params: dict[str, Any]) -> dict[str, Any]:
    _init(root, threads)
    from dg_core.config import from_dict
    from dg_core.evaluate import Config, evaluate_ref

    t0 = time.perf_counter()
    res = evaluate_ref(from_dict(Config, {**params, "device": "cpu"}))
    keep = {k: res[k] for k in ("greedy_accuracy", "sampled_accuracy", "accuracy", "n", "groups") if k in res}
    styles = _style_mix([r.get("greedy", {}).get("response", "") for r in res.get("_rows", [])])
    return {**keep, "styles": styles, "seconds": time.perf_counter() - t0}


def job_teacher(root: str, threads: int, params: dict[str, Any], distills: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate a teacher and build, once, the teacher signals every student of it will read."""
    _init(root, threads)
    from dg_core.config import from_dict
    from dg_core.distill import stage as distill_stage
    from dg_core.distill.signals import build_signals, default_signals_uri
    from dg_core.evaluate import Config, evaluate_ref
    from dg_core.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(params["model"], device="cpu")
    res = evaluate_ref(from_dict(Config, {**params, "device": "cpu"}), loaded=loaded)
    keep = {k: res[k] for k in ("greedy_accuracy", "sampled_accuracy", "accuracy", "n", "groups") if k in res}
    styles = _style_mix([r.get("greedy", {}).get("response", "") for r in res.get("_rows", [])])
    t1 = time.perf_counter()
    wanted = {}
    for d in distills:
        dcfg = from_dict(distill_stage.Config, {**d, "device": "cpu"})
        wanted[default_signals_uri(dcfg, dcfg.signals_topk())] = dcfg
    for uri, dcfg in wanted.items():
        build_signals(dcfg, topk=dcfg.signals_topk(), uri=uri, teacher=loaded)
    return {**keep, "styles": styles, "eval_seconds": t1 - t0, "signals_seconds": time.perf_counter() - t1}


def job_calibrate(root: str, threads: int, params: dict[str, Any]) -> dict[str, Any]:
    _init(root, threads)
    from dg_core import store
    from dg_core.calibrate import stage
    from dg_core.config import from_dict
    from dg_core.errors import DGError

    cfg = from_dict(stage.Config, {**params, "device": "cpu", "progress": False})
    card_uri = store.join(cfg.output, "card")
    t0 = time.perf_counter()
    if store.is_published(card_uri):
        card = json.loads((store.fetch(card_uri) / "card.json").read_text())
        return {"card": card, "reused": True, "seconds": 0.0}
    try:
        stage.run(cfg)
    except DGError as e:  # e.g. the pre-flight guard refused the teacher
        return {"error": str(e), "seconds": time.perf_counter() - t0}
    card = json.loads((store.fetch(card_uri) / "card.json").read_text())
    return {"card": card, "reused": False, "seconds": time.perf_counter() - t0}


def job_attack(root: str, threads: int, distill: dict[str, Any], evaluate: dict[str, Any]) -> dict[str, Any]:
    _init(root, threads)
    from dg_core.config import from_dict
    from dg_core.distill import stage as distill_stage
    from dg_core.evaluate import Config, evaluate_ref

    t0 = time.perf_counter()
    out = distill_stage.run(from_dict(distill_stage.Config, {**distill, "device": "cpu"}))
    t1 = time.perf_counter()
    res = evaluate_ref(from_dict(Config, {**evaluate, "model": out["model"], "device": "cpu"}))
    styles = _style_mix([r.get("greedy", {}).get("response", "") for r in res.get("_rows", [])])
    return {
        "accuracy": res["greedy_accuracy"],
        "styles": styles,
        "model": out["model"],
        "reused": out.get("reused", False),
        "distill_seconds": t1 - t0,
        "eval_seconds": time.perf_counter() - t1,
    }


def _style_mix(responses: list[str]) -> dict[str, float]:
    """Which solution style responses use, by shape: ``compressed`` (answer only), ``steps`` (the work written
    out: decomposed or compact, identical for one-digit factors), ``checked`` (steps plus a reverse check)."""
    counts = {"compressed": 0, "steps": 0, "checked": 0, "other": 0}
    for r in responses:
        parts = r.split()
        if len(parts) == 1 and r.startswith("#"):
            counts["compressed"] += 1
        elif not parts or not parts[-1].startswith("#"):
            counts["other"] += 1
        else:
            eqs = parts[:-1]
            has_check = len(eqs) >= 2 and any(
                ("-" in e and "+" in prev) or ("+" in e and "-" in prev) for prev, e in zip(eqs, eqs[1:])
            )
            counts["checked" if has_check else "steps"] += 1
    n = max(1, len(responses))
    return {k: v / n for k, v in counts.items() if v}


# --------------------------------------------------------------------------------------------- steps


def make_dataset(root: str, task_opts: dict[str, Any], n_train: int, n_val: int, n_test: int, seed: int) -> str:
    """Publish the synthetic dataset artifact once (references drawn uniformly from every style)."""
    import tempfile

    from dg_core import store
    from dg_core.data import get_task
    from dg_core.data.artifact import write_manifest
    from dg_core.data.example import write_jsonl

    key = json.dumps({"task": task_opts, "n": [n_train, n_val, n_test], "seed": seed}, sort_keys=True)
    import hashlib

    uri = store.join(root, "knob", "data", hashlib.sha256(key.encode()).hexdigest()[:10])
    if store.is_published(uri):
        return uri
    task = get_task("synthetic_math", **task_opts)
    rows = task.generate(n_train + n_val + n_test, seed)
    splits = {"train": rows[:n_train], "validation": rows[n_train : n_train + n_val], "test": rows[n_train + n_val :]}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = {"task": task.spec(), "splits": {}, "seed": seed, "source": "bench/knob.py"}
        for name, ex in splits.items():
            write_jsonl(Path(tmp) / f"{name}.jsonl", ex)
            manifest["splits"][name] = {"file": f"{name}.jsonl", "rows": len(ex)}
        write_manifest(Path(tmp), manifest)
        store.publish(tmp, uri, metadata={"kind": "dataset", "task": task.spec()})
    return uri


def run_jobs(pool: ProcessPoolExecutor | None, jobs: list[tuple[str, Any, tuple]]) -> dict[str, Any]:
    """Run ``(key, fn, args)`` jobs, in the pool when given; returns results by key, printing as they finish."""
    out: dict[str, Any] = {}
    if pool is None:
        for key, fn, args in jobs:
            out[key] = fn(*args)
            print(f"  done {key} ({_secs(out[key])})", flush=True)
        return out
    futs = {pool.submit(fn, *args): key for key, fn, args in jobs}
    for f in as_completed(futs):
        key = futs[f]
        out[key] = f.result()
        print(f"  done {key} ({_secs(out[key])})", flush=True)
    return out


def _secs(r: dict[str, Any]) -> str:
    s = sum(v for k, v in r.items() if k.endswith("seconds") and isinstance(v, (int, float)))
    return "reused" if r.get("reused") and s < 1 else f"{s:.0f}s"


def mean_sd(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=ROOT_DEFAULT, help="store root for every artifact (cache)")
    ap.add_argument("--out", default="/tmp/dg-knob", help="directory for knob.json and knob.png")
    ap.add_argument(
        "--task",
        default='{"a_digits": 1, "b_digits": 1, "terms": 1, "term_digits": 2}',
        help="synthetic_math options",
    )
    ap.add_argument("--styles", default="decomposed,compressed,checked", help="reference styles mixed")
    ap.add_argument("--n-train", type=int, default=2800)
    ap.add_argument("--n-val", type=int, default=150)
    ap.add_argument("--n-test", type=int, default=250)
    ap.add_argument(
        "--sft-style",
        default="compressed,compressed,decomposed,checked",
        help="train stage `style` for the teacher: 'all' keeps a per-prompt choice of style to calibrate; a list "
        "with repeats weights styles (e.g. compressed,compressed,decomposed,checked: a teacher terse half the time)",
    )
    ap.add_argument("--proxy-style", default="all", help="train stage `style` for the proxy")
    ap.add_argument("--teacher-steps", type=int, default=4000)
    ap.add_argument("--teacher-lr", type=float, default=2e-3)
    ap.add_argument("--proxy-steps", type=int, default=2500)
    ap.add_argument("--etas", default="-1,-0.5,0,0.5,1")
    ap.add_argument("--rl-steps", type=int, default=40)
    ap.add_argument("--rl-lr", type=float, default=5e-4)
    ap.add_argument("--rl-prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--lora-r", type=int, default=16, help="0: full fine-tuning")
    ap.add_argument("--cal-gate", default="correct")
    ap.add_argument("--normalize", default="char")
    ap.add_argument("--preflight", type=float, default=0.8)
    ap.add_argument(
        "--attacks", default="student-llama:sft,student-llama:kd,student-gpt2:sft", help="student:method,..."
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--student-steps", type=int, default=1000)
    ap.add_argument("--student-batch", type=int, default=64)
    ap.add_argument("--student-lr", type=float, default=3e-3)
    ap.add_argument("--student-prompts", type=int, default=2000, help="training prompts the teacher answers")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2, help="processes (1: run in this process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--stop-after", default="", choices=["", "bootstrap", "calibrate"], help="stop after a phase")
    ap.add_argument("--small", action="store_true", help="tiny settings: check the plumbing in minutes")
    args = ap.parse_args(argv)
    if args.small:
        args.n_train, args.n_val, args.n_test = 400, 32, 48
        args.teacher_steps, args.proxy_steps, args.rl_steps = 60, 30, 2
        args.rl_prompts, args.group, args.seeds, args.student_steps, args.student_prompts = 4, 4, 2, 20, 64
        args.preflight = 0.0
        args.etas = "-1,1"
        args.root = args.root if args.root != ROOT_DEFAULT else "file:///tmp/dg-knob-small/store"
        args.out = args.out if args.out != "/tmp/dg-knob" else "/tmp/dg-knob-small"
    os.environ["DG_STORE_ROOT"] = args.root
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    task_opts = json.loads(args.task)
    styles = [s for s in args.styles.split(",") if s]
    task_opts["style_mix"] = {s: 1.0 for s in styles}
    etas = [float(x) for x in args.etas.split(",")]
    attacks = [tuple(a.split(":")) for a in args.attacks.split(",")]
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    root = args.root

    import multiprocessing as mp

    pool = (
        ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) if args.workers > 1 else None
    )
    try:
        # 1. data
        t = time.perf_counter()
        dataset = make_dataset(root, task_opts, args.n_train, args.n_val, args.n_test, seed=0)
        timings["data"] = time.perf_counter() - t
        print(f"[data] {dataset} ({timings['data']:.1f}s)", flush=True)

        # 2. bootstrap teacher and proxy (SFT on every style)
        t = time.perf_counter()
        common = {
            "dataset": dataset,
            "split": "train",
            "batch_size": 64,
            "warmup_steps": 50,
            "checkpoint_every": 500,
        }
        boot = run_jobs(
            pool,
            [
                (
                    "teacher",
                    job_train,
                    (
                        root,
                        args.threads,
                        {
                            **common,
                            "model": "zoo:teacher",
                            "style": args.sft_style,
                            "steps": args.teacher_steps,
                            "lr": args.teacher_lr,
                        },
                    ),
                ),
                (
                    "proxy",
                    job_train,
                    (
                        root,
                        args.threads,
                        {
                            **common,
                            "model": "zoo:proxy",
                            "style": args.proxy_style,
                            "steps": args.proxy_steps,
                            "lr": 3e-3,
                        },
                    ),
                ),
            ],
        )
        teacher, proxy = boot["teacher"]["model"], boot["proxy"]["model"]
        timings["bootstrap"] = time.perf_counter() - t
        print(f"[bootstrap] teacher {teacher} proxy {proxy} ({timings['bootstrap']:.0f}s)", flush=True)
        if args.stop_after == "bootstrap":
            return 0

        # 3. calibrate for each eta
        t = time.perf_counter()
        calib_jobs = []
        for eta in etas:
            params = {
                "teacher": teacher,
                "proxies": [proxy],
                "dataset": dataset,
                "eta": eta,
                "beta": args.beta,
                "steps": args.rl_steps,
                "lr": args.rl_lr,
                "prompts_per_step": args.rl_prompts,
                "group_size": args.group,
                "lora_r": args.lora_r,
                "cal_gate": args.cal_gate,
                "normalize": args.normalize,
                "max_new_tokens": args.max_new_tokens,
                "preflight_accuracy": args.preflight,
                "min_retention": 0.0,  # the bench reports retention itself; keep every model for the curve
                "eval_every": 0 if args.small else 10,
                "eval_n": args.n_val,
                "checkpoint_every": 10,
                "seed": 0,
            }
            from dg_core.calibrate.stage import Config, default_output
            from dg_core.config import from_dict

            params["output"] = default_output(from_dict(Config, params))
            calib_jobs.append((f"eta={eta:+g}", job_calibrate, (root, args.threads, params)))
        calib = run_jobs(pool, calib_jobs)
        timings["calibrate"] = time.perf_counter() - t
        for k, v in calib.items():
            if "error" in v:
                print(f"[calibrate {k}] refused: {v['error']}", flush=True)
                continue
            c = v["card"]
            b, a = c["teacher_metrics"]["before"], c["teacher_metrics"]["after"]
            print(
                f"[calibrate {k}] greedy {b['greedy_accuracy']:.3f}->{a['greedy_accuracy']:.3f} "
                f"sampled {b['sampled_accuracy']:.3f}->{a['sampled_accuracy']:.3f} "
                f"r_cal {b['r_cal_mean']:+.2f}->{a['r_cal_mean']:+.2f} chars {b['response_chars']:.1f}->"
                f"{a['response_chars']:.1f} steps {c['training']['steps_done']} "
                f"({c['training']['train_seconds']:.0f}s train) stopped={c['training']['stopped_early']}",
                flush=True,
            )

        # 4. attack every teacher
        t = time.perf_counter()
        teachers = {"original": teacher}
        if args.stop_after == "calibrate":
            return 0
        calib = dict(sorted(calib.items(), key=lambda kv: float(kv[0].split("=")[1])))
        for k, v in calib.items():
            model = v.get("card", {}).get("outputs", {}).get("model")
            if model:
                teachers[k] = model
        ev = {"dataset": dataset, "split": "test", "k": 4, "max_new_tokens": args.max_new_tokens, "n_boot": 10}
        student_jobs, per_teacher = [], {}
        for name, uri in teachers.items():
            per_teacher[name] = []
            for student, method in attacks:
                for seed in range(args.seeds):
                    d = {
                        "teacher": uri,
                        "student": f"zoo:{student}",
                        "dataset": dataset,
                        "method": method,
                        "steps": args.student_steps,
                        "batch_size": args.student_batch,
                        "lr": args.student_lr,
                        "limit": args.student_prompts,
                        "n_samples": 2,
                        "max_new_tokens": args.max_new_tokens,
                        "reinit": True,
                        "seed": seed,
                        "checkpoint_every": 0,
                    }
                    per_teacher[name].append(d)
                    e = {**ev, "k": 0}
                    student_jobs.append((f"{name}|{student}/{method}|{seed}", job_attack, (root, args.threads, d, e)))
        jobs = [
            (f"teacher {name}", job_teacher, (root, args.threads, {**ev, "model": uri}, per_teacher[name]))
            for name, uri in teachers.items()
        ]
        results = run_jobs(pool, jobs)
        timings["teachers+signals"] = time.perf_counter() - t
        results.update(run_jobs(pool, student_jobs))
        timings["attack"] = time.perf_counter() - t
    finally:
        if pool is not None:
            pool.shutdown()

    # 5. table + plot
    acc_t = {name: results[f"teacher {name}"]["greedy_accuracy"] for name in teachers}
    rows = []
    cells = [f"{s}/{m}" for s, m in attacks]
    for name in teachers:
        row: dict[str, Any] = {
            "teacher": name,
            "teacher_acc": acc_t[name],
            "teacher_sampled": results[f"teacher {name}"].get("sampled_accuracy"),
            "retention": acc_t[name] / acc_t["original"] if acc_t["original"] else float("nan"),
            "teacher_styles": results[f"teacher {name}"]["styles"],
        }
        for cell in cells:
            accs = [results[f"{name}|{cell}|{s}"]["accuracy"] for s in range(args.seeds)]
            base = [results[f"original|{cell}|{s}"]["accuracy"] for s in range(args.seeds)]
            m, sd = mean_sd(accs)
            bm, _ = mean_sd(base)
            row[cell] = {"acc": accs, "mean": m, "sd": sd, "transfer": m / bm if bm else float("nan")}
            row[cell]["styles"] = results[f"{name}|{cell}|0"]["styles"]
        rows.append(row)

    head = f"{'teacher':<10} {'acc':>6} {'retain':>7} " + " ".join(f"{c + ' acc±sd (transfer)':>36}" for c in cells)
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        cols = " ".join(f"{r[c]['mean']:>15.3f} ± {r[c]['sd']:.3f} ({r[c]['transfer']:.2f})".rjust(36) for c in cells)
        print(f"{r['teacher']:<10} {r['teacher_acc']:>6.3f} {r['retention']:>7.3f} {cols}")
    print("\nteacher greedy styles:")
    for r in rows:
        print(f"  {r['teacher']:<10} " + ", ".join(f"{k} {v:.2f}" for k, v in r["teacher_styles"].items()))
    timings["total"] = time.perf_counter() - t_all
    print("\ntimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    verdicts = []
    for r in rows:
        if r["teacher"] == "original":
            continue
        eta = float(r["teacher"].split("=")[1])
        tr = [r[c]["transfer"] for c in cells]
        if eta < 0:
            ok = r["retention"] >= 0.95 and max(tr) <= 0.5
            verdicts.append(
                f"{r['teacher']}: undistillable target {'MET' if ok else 'not met'} "
                f"(retention {r['retention']:.3f}, worst transfer {max(tr):.2f})"
            )
        elif eta > 0:
            ok = min(tr) >= 1.10
            verdicts.append(
                f"{r['teacher']}: distillable target {'MET' if ok else 'not met'} (min transfer {min(tr):.2f})"
            )
        else:
            verdicts.append(
                f"{r['teacher']}: control (retention {r['retention']:.3f}, transfers {', '.join(f'{x:.2f}' for x in tr)})"
            )
    print("\n" + "\n".join(verdicts))
    summary = {
        "args": vars(args),
        "rows": rows,
        "timings": timings,
        "calibration": {k: v.get("card", v) for k, v in calib.items()},
    }
    (Path(args.out) / "knob.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(rows, cells, Path(args.out) / "knob.png")
    (Path(args.out) / "knob.md").write_text(markdown(rows, cells, summary["calibration"]))
    print(f"\nwrote {args.out}/knob.json, knob.md and knob.png")
    return 0


def markdown(rows: list[dict[str, Any]], cells: list[str], calibration: dict[str, Any]) -> str:
    """The table as Markdown: teacher accuracy and retention, r_cal, per-cell mean ± sd (transfer), styles."""
    head = (
        ["teacher", "acc", "retention", "r_cal (card)"] + [f"{c} (transfer)" for c in cells] + ["teacher greedy style"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        card = calibration.get(r["teacher"], {})
        metrics = card.get("teacher_metrics", {}) if isinstance(card, dict) else {}
        rcal = metrics.get("after", metrics.get("before", {})).get("r_cal_mean")
        if r["teacher"] == "original" and calibration:
            first = next(iter(calibration.values()))
            rcal = (
                first.get("teacher_metrics", {}).get("before", {}).get("r_cal_mean")
                if isinstance(first, dict)
                else None
            )
        styles = ", ".join(f"{v:.0%} {k}" for k, v in sorted(r["teacher_styles"].items(), key=lambda kv: -kv[1]))
        cols = [f"{r[c]['mean']:.3f} ± {r[c]['sd']:.3f} ({r[c]['transfer']:.2f})" for c in cells]
        rc = f"{rcal:+.2f}" if isinstance(rcal, (int, float)) else "–"
        lines.append(
            "| "
            + " | ".join([r["teacher"], f"{r['teacher_acc']:.3f}", f"{r['retention']:.3f}", rc, *cols, styles])
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], cells: list[str], path: Path) -> None:
    """Trade-off: teacher retention (x) vs student transfer (y), one series per student/method, labelled by eta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))

    def eta_of(r: dict[str, Any]) -> float:
        return float(r["teacher"].split("=")[1]) if "=" in r["teacher"] else float("nan")

    cal = sorted((r for r in rows if "=" in r["teacher"]), key=eta_of)
    base = next(r for r in rows if r["teacher"] == "original")
    for cell in cells:
        xs = [r["retention"] for r in cal]
        ys = [r[cell]["transfer"] for r in cal]
        errs = [r[cell]["sd"] / max(1e-9, base[cell]["mean"]) for r in cal]
        line = ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=cell)
        for r, x, y in zip(cal, xs, ys):
            ax.annotate(f"η={eta_of(r):+g}", (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.plot([1.0], [1.0], marker="*", ms=12, color=line[0].get_color())
    ax.annotate("original teacher", (1.0, 1.0), fontsize=7, xytext=(-60, -12), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.axhline(0.5, color="red", lw=0.5, ls="--", label="undistillable target")
    ax.axhline(1.1, color="green", lw=0.5, ls="--", label="distillable target")
    ax.axvline(0.95, color="red", lw=0.5, ls=":")
    ax.set_xlabel("teacher retention  acc(calibrated) / acc(original)")
    ax.set_ylabel("student transfer  acc(student←calibrated) / acc(student←original)")
    ax.set_title("Distillability knob: eta sweep on synthetic math (zoo models)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
