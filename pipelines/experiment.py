"""The one orchestrator of the knob experiment: bootstrap, calibrate per eta, attack, judge, as KFP components.

``make demo`` (:mod:`pipelines.demo`) and ``bench/knob.py`` both run this graph, from YAML settings
(``pipelines/experiments/*.yaml``, ``bench/knob.yaml``), so a sweep in the benchmark and the demo cannot differ in
how an attack, a calibration or a gate is run; the in-process ``attack`` stage and the KFP attack loop expand
attacks with the same planner (``dg_core.distill.suite.plan_attacks``). The same components as the
``calibrate`` pipeline (prep, train, evaluate, calibrate, distill, report, gate, publish) run under
``kfp.local`` on the store. ``kfp.local`` runs one task at a time, so this module schedules the graph itself:
each independent task goes to one of ``workers`` processes (one torch thread each).

1. bootstrap: SFT the teacher and the proxy on the dataset (``teacher.train`` / ``proxy.train``; omit ``train``
   to use a model as it is);
2. calibrate the teacher for each eta in ``etas`` (the sign picks the direction, see ``dg_core.knob``);
3. attack the original and each calibrated teacher with every attack job: distill, then evaluate;
4. per eta: the report (trade-off table and plot) and the release gate; an undistillable teacher that passes is
   published as the hardened model when ``publish`` is true.

Settings name only what differs from the stage defaults: every component parameter a YAML section leaves out
takes its stage Config default (``component_kwargs``), and anything that is not a component parameter goes into
the component's ``options``. Every step is published to the store and reused by the next run.

Over 500 lines: settings, the worker-side jobs, the scheduler and the summary table of one experiment, kept in one readable file (torchtune's one-file recipes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dg_core.errors import DGError

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
_COMPONENT_STAGE = {"prep": "prep", "train": "train", "evaluate": "evaluate", "calibrate": "calibrate",
                    "distill": "distill"}  # fmt: skip


# --------------------------------------------------------------------------------------------- settings


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(*paths: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """YAML files merged in order (mappings deep-merged, lists replaced), then ``key.sub=JSON`` overrides; a key
    the first file does not have is refused before anything runs."""
    import yaml

    cfg: dict[str, Any] = {}
    for p in paths:
        try:
            data = yaml.safe_load(Path(p).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise DGError(f"experiment settings {p}: {e}; expected a readable YAML mapping") from None
        if not isinstance(data, dict):
            raise DGError(f"experiment settings {p}: expected a YAML mapping")
        if cfg and (bad := sorted(set(data) - set(cfg))):
            raise DGError(f"experiment settings {p}: unknown key {bad[0]!r}, expected one of {', '.join(cfg)}")
        cfg = _merge(cfg, data)
    for item in overrides:
        key, sep, value = item.partition("=")
        path = key.split(".")
        if not sep or path[0] not in cfg:
            raise DGError(f"demo setting {item!r}: expected key=value with key one of {', '.join(cfg)}")
        try:
            val = json.loads(value)
        except json.JSONDecodeError:
            val = value
        node = cfg
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = val
    return cfg


def component_kwargs(name: str, values: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """Arguments for component ``name``: ``fixed`` and ``values`` where they name a parameter, else the stage
    Config's default for it (the one place defaults live); every other value goes into ``options``."""
    import dataclasses

    from dg_core.stages import get_stage

    stage_fields = {f.name: f for f in dataclasses.fields(get_stage(_COMPONENT_STAGE[name]).load().Config)}
    given = {**values, **fixed}
    options = dict(given.pop("options", None) or {})
    kwargs: dict[str, Any] = {}
    for param, spec in _component(name).component_spec.inputs.items():
        if param in ("options", "store_root"):
            continue
        if param in given:
            kwargs[param] = given.pop(param)
        elif spec.optional:  # the component's own setting (placement: processes, nodes); its default stands
            continue
        elif param in stage_fields:
            f = stage_fields[param]
            kwargs[param] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        else:
            raise DGError(f"component {name}: parameter {param!r} has no stage default; expected it in the settings")
    return {**kwargs, "options": {**given, **options}}


# --------------------------------------------------------------------------------------------- worker side
# Each worker process runs components under kfp.local, its output appended to the log file.


def _init_worker(log_path: str, store_root: str, outputs_dir: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(
        {
            "DG_STORE_ROOT": store_root,
            "DG_THREADS": os.environ.get("DG_THREADS", "1"),
            "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        }
    )
    import logging
    import warnings

    from kfp import local

    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.INFO)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=outputs_dir)


def _component(name: str) -> Any:
    import importlib

    module, attr = {
        "prep": ("prep", "prep"),
        "train": ("train", "train"),
        "evaluate": ("evaluate", "evaluate"),
        "calibrate": ("calibrate", "calibrate"),
        "distill": ("distill", "distill"),
        "report": ("report", "report"),
        "gate": ("gate", "gate"),
        "publish": ("publish", "publish"),
    }[name]
    return getattr(importlib.import_module(f"components.{module}.component"), attr)


def _run(name: str, **kwargs: Any) -> Any:
    """Run one component under kfp.local; a failed task becomes a one-line DGError (the component's own)."""
    return _run_pipeline(_component(name), **kwargs)


def _run_pipeline(fn: Any, **kwargs: Any) -> Any:
    """Run a component or pipeline under kfp.local; a failure becomes a one-line DGError (the component's own)."""
    import re

    from pipelines.local import _Tee

    name = getattr(fn, "name", "task")
    tee = _Tee(sys.stdout)
    old, sys.stdout = sys.stdout, tee
    try:
        return fn(**kwargs)
    except RuntimeError as e:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0]
        raise DGError(f"{name}: {tee.failures[-1] if tee.failures else plain}") from None
    finally:
        sys.stdout = old
        sys.stdout.flush()


def job_prep(cfg: dict[str, Any], root: str) -> dict[str, Any]:
    t = _run("prep", **component_kwargs("prep", cfg["prep"]), store_root=root)
    return {"dataset": t.outputs["Output"]}


def job_bootstrap(cfg: dict[str, Any], root: str, role: str, dataset: str) -> dict[str, Any]:
    """SFT the teacher or proxy (``cfg[role]['train']``); without ``train``, the model as it is.

    ``cfg[role]['threads']`` gives this task more torch threads than the workers' one: nothing else can start
    while the teacher bootstraps (every later task needs it), so the other core would otherwise sit idle."""
    spec = cfg[role]
    if not spec.get("train"):
        return {"model": spec["model"]}
    threads = os.environ.get("DG_THREADS", "1")
    os.environ["DG_THREADS"] = str(spec.get("threads") or threads)
    try:
        kw = component_kwargs("train", spec["train"], model=spec["model"], dataset=dataset)
        t = _run("train", **kw, store_root=root)
    finally:
        os.environ["DG_THREADS"] = threads
    return {"model": t.outputs["Output"]}


def _evaluate(cfg: dict[str, Any], root: str, model: str, dataset: str, **label: Any) -> dict[str, Any]:
    full = {"role": "teacher", "teacher": "original", "student": "", "method": "", "seed": 0, **label}
    t = _run("evaluate", **component_kwargs("evaluate", cfg["evaluate"], model=model, dataset=dataset, **full),
             store_root=root)  # fmt: skip
    return t.outputs["Output"]


def job_eval_teacher(cfg: dict[str, Any], root: str, model: str, dataset: str) -> dict[str, Any]:
    return {"record": _evaluate(cfg, root, model, dataset)}


def job_calibrate(cfg: dict[str, Any], root: str, teacher: str, proxy: str, dataset: str, eta: float) -> dict:
    kw = component_kwargs("calibrate", cfg["calibrate"], teacher=teacher, proxies=[proxy], dataset=dataset, eta=eta)
    t = _run("calibrate", **kw, store_root=root)
    model, calibration = t.outputs["Output"], t.outputs["calibration"]
    if not model:
        raise DGError(f"calibration eta={eta:+g} refused the teacher; see its card {calibration}")
    record = _evaluate(cfg, root, model, dataset, teacher="calibrated")
    return {"model": model, "calibration": calibration, "record": record}


def job_attack(cfg: dict[str, Any], root: str, teacher: str, side: str, job: Any, dataset: str) -> dict:
    kw = component_kwargs("distill", job.settings, teacher=teacher, dataset=dataset, seed=job.seed)
    t = _run("distill", **kw, store_root=root)
    record = _evaluate(cfg, root, t.outputs["Output"], dataset, role="student", teacher=side, student=job.student,
                       method=job.method, seed=job.seed)  # fmt: skip
    return {"record": {**record, "attack": job.attack}}  # the gate groups by it: named variants stay apart


def job_judge(
    cfg: dict[str, Any],
    root: str,
    eta: float,
    teachers: list[dict],
    students: list[list[dict]],
    model: str,
    calibration: str,
    release: str,
    publish: bool,
) -> dict[str, Any]:
    """Gate, report and (when the gate passed and ``publish``) publish one calibrated teacher.

    They run as one small pipeline under kfp.local, as in the calibrate pipeline: the report and publish take
    the gate's decision as an input artifact, which kfp.local passes only between tasks of a pipeline."""
    from kfp import dsl

    from dg_core import store

    gate_c, report_c, publish_c = _component("gate"), _component("report"), _component("publish")
    import dataclasses

    from dg_core.distill.stage import Config as DistillConfig
    from dg_core.gate import Config as GateConfig

    gate_fields = {f.name: f.default for f in dataclasses.fields(GateConfig)}
    g = {k: cfg["gate"].get(k, gate_fields[k]) for k in ("min_retention", "max_transfer", "min_transfer",
                                                        "aggregate", "min_seeds")}  # fmt: skip
    steps = _attack_jobs(cfg)[0].settings.get("steps", DistillConfig.__dataclass_fields__["steps"].default)
    dest = store.join(root, "hardened", f"{cfg.get('name', 'experiment')}-eta{eta:+g}")

    def judge(teacher_original: dict, teacher_calibrated: dict, students_original: list, students_calibrated: list,
              model: str, eta: float, calibration: str, release: str, publish_model: bool, dest: str,
              store_root: str) -> str:  # fmt: skip
        gt = gate_c(teacher_original=teacher_original, teacher_calibrated=teacher_calibrated,
                    students_original=students_original, students_calibrated=students_calibrated, model=model,
                    eta=eta, min_retention=g["min_retention"], max_transfer=g["max_transfer"],
                    min_transfer=g["min_transfer"], aggregate=g["aggregate"], min_seeds=g["min_seeds"],
                    store_root=store_root)  # fmt: skip
        r = report_c(teacher_original=teacher_original, teacher_calibrated=teacher_calibrated,
                     students_original=students_original, students_calibrated=students_calibrated, floors=[],
                     attack_steps=steps, eta=eta, decision=gt.outputs["decision"],
                     store_root=store_root)  # fmt: skip
        with dsl.If(gt.outputs["Output"] == True):  # noqa: E712 - a KFP condition
            with dsl.If(publish_model == True):  # noqa: E712
                publish_c(model=model, decision=gt.outputs["decision"], calibration=calibration, release=release,
                          releases_prefix="", hardened_prefix="", dest=dest, store_root=store_root)  # fmt: skip
        return r.outputs["Output"]

    # kfp reads real annotations (this module's are strings under `from __future__ import annotations`)
    judge.__annotations__ = {"teacher_original": dict, "teacher_calibrated": dict, "students_original": list,
                             "students_calibrated": list, "model": str, "eta": float, "calibration": str,
                             "release": str, "publish_model": bool, "dest": str, "store_root": str,
                             "return": str}  # fmt: skip
    judge = dsl.pipeline(name="demo-judge")(judge)
    t = _run_pipeline(judge, teacher_original=teachers[0], teacher_calibrated=teachers[1],
                      students_original=students[0], students_calibrated=students[1], model=model, eta=eta,
                      calibration=calibration, release=release, publish_model=publish, dest=dest,
                      store_root=root)  # fmt: skip
    report_dir = store.fetch(t.output)
    from dg_core.gate import read_result

    verdict = read_result(json.loads((report_dir / "report.json").read_text())["gate"]["uri"])
    hardened = dest if verdict["passed"] and publish and store.is_published(dest) else ""
    return {"html": str(report_dir / "report.html"), "report": t.output, "gate": verdict, "hardened": hardened}


# --------------------------------------------------------------------------------------------- scheduler


@dataclass
class Task:
    """One line on the terminal: a job (one or a few components) and the tasks it waits for."""

    key: str
    label: str
    fn: Callable[..., dict[str, Any]]
    args: Callable[[dict[str, dict[str, Any]]], tuple]  # results so far -> job arguments
    deps: list[str] = field(default_factory=list)


def _fmt_secs(s: float) -> str:
    return f"{s:.0f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _attack_jobs(cfg: dict[str, Any]) -> list:
    from dg_core.distill.suite import plan_attacks

    return plan_attacks(cfg["attacks"], cfg.get("distill"))


def plan(cfg: dict[str, Any], root: str) -> list[Task]:
    """The experiment's graph, in the order tasks should start when several are ready (longest chains first)."""
    etas = cfg["etas"]
    tasks = [
        Task("prep", "prep dataset", job_prep, lambda r: (cfg, root)),
        Task(
            "teacher",
            "bootstrap teacher (train)",
            job_bootstrap,
            lambda r: (cfg, root, "teacher", r["prep"]["dataset"]),
            ["prep"],
        ),
        Task(
            "proxy",
            "bootstrap proxy (train)",
            job_bootstrap,
            lambda r: (cfg, root, "proxy", r["prep"]["dataset"]),
            ["prep"],
        ),
    ]
    for eta in etas:
        tasks.append(
            Task(
                f"cal{eta:+g}",
                f"calibrate eta={eta:+g}, evaluate",
                job_calibrate,
                lambda r, eta=eta: (cfg, root, r["teacher"]["model"], r["proxy"]["model"], r["prep"]["dataset"], eta),
                ["teacher", "proxy", "prep"],
            )
        )
    tasks.append(
        Task(
            "eval-original",
            "evaluate original teacher",
            job_eval_teacher,
            lambda r: (cfg, root, r["teacher"]["model"], r["prep"]["dataset"]),
            ["teacher"],
        )
    )
    jobs = _attack_jobs(cfg)
    key = lambda side, j: f"{side}|{j.attack}|{j.seed}"  # noqa: E731
    for side in ["original", *(f"cal{e:+g}" for e in etas)]:
        src = "original" if side == "original" else f"eta={side[3:]}"
        model_of = (lambda r: r["teacher"]["model"]) if side == "original" else (lambda r, s=side: r[s]["model"])
        for job in jobs:
            tasks.append(
                Task(
                    key(side, job),
                    f"distill {job.attack} (seed {job.seed}) from {src}, evaluate",
                    job_attack,
                    lambda r, m=model_of, s=side, j=job: (
                        cfg,
                        root,
                        m(r),
                        "original" if s == "original" else "calibrated",
                        j,
                        r["prep"]["dataset"],
                    ),  # fmt: skip
                    ["teacher", "prep"] + ([] if side == "original" else [side]),
                )
            )
    for eta in etas:
        side = f"cal{eta:+g}"
        keys = {s: [key(s, j) for j in jobs] for s in ("original", side)}
        tasks.append(
            Task(
                f"judge{eta:+g}",
                f"report, gate{', publish' if eta < 0 and cfg.get('publish') else ''} eta={eta:+g}",
                job_judge,
                lambda r, eta=eta, side=side, keys=keys: (
                    cfg,
                    root,
                    eta,
                    [r["eval-original"]["record"], r[side]["record"]],
                    [[r[k]["record"] for k in keys["original"]], [r[k]["record"] for k in keys[side]]],
                    r[side]["model"],
                    r[side]["calibration"],
                    r["teacher"]["model"],
                    eta < 0 and bool(cfg.get("publish")),
                ),
                ["eval-original", side, *keys["original"], *keys[side]],
            )
        )

    # Start the long chain (teacher -> calibrate -> students of calibrated) before the side branches.
    def rank(t: Task) -> int:
        fixed = {"prep": 0, "teacher": 1, "proxy": 2}
        if t.key in fixed:
            return fixed[t.key]
        if "|" in t.key:  # attacks: those of calibrated teachers first (they end the longest chain)
            return 4 if t.key.startswith("cal") else 5
        return 6 if t.key.startswith("judge") else 3

    return sorted(tasks, key=rank)


def run_graph(tasks: list[Task], workers: int, init: tuple, echo: Callable[[str], None]) -> dict[str, dict]:
    """Run tasks on ``workers`` processes as their dependencies finish; stop at the first failure."""
    import multiprocessing as mp

    results: dict[str, dict[str, Any]] = {}
    pending = list(tasks)
    running: dict[Future, tuple[Task, float]] = {}
    t_all = time.monotonic()
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=init
    ) as pool:
        while pending or running:
            for t in [t for t in pending if all(d in results for d in t.deps)]:
                if len(running) >= workers:
                    break
                pending.remove(t)
                running[pool.submit(t.fn, *t.args(results))] = (t, time.monotonic())
                echo(f"[{_fmt_secs(time.monotonic() - t_all):>6}] start {t.label}")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                t, t0 = running.pop(f)
                try:
                    results[t.key] = f.result()
                except Exception as e:  # noqa: BLE001 - reported as one line; the log has the rest
                    for other in running:
                        other.cancel()
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise DGError(f"task '{t.label}' failed: {reason}") from None
                echo(f"[{_fmt_secs(time.monotonic() - t_all):>6}] done  {t.label} ({_fmt_secs(time.monotonic() - t0)})")
    return results


# --------------------------------------------------------------------------------------------- summary


def summary(cfg: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the demo showed: teacher accuracy/retention per eta, per attack accuracies and transfer, gates."""
    acc0 = results["eval-original"]["record"]["accuracy"]
    teachers = [{"teacher": "original", "eta": None, "accuracy": acc0, "retention": 1.0}]
    attacks: dict[str, dict[str, Any]] = {}
    gates = []
    for eta in cfg["etas"]:
        side, judge = f"cal{eta:+g}", results[f"judge{eta:+g}"]
        g = judge["gate"]
        teachers.append(
            {
                "teacher": f"eta={eta:+g}",
                "eta": eta,
                "accuracy": results[side]["record"]["accuracy"],
                "retention": g["retention"],
            }
        )
        for name, a in g["attacks"].items():
            row = attacks.setdefault(name, {"attack": name, "original": a["acc_original"]})
            row[f"eta={eta:+g}"] = {"accuracy": a["acc_calibrated"], "transfer": a.get("transfer")}
        gates.append(
            {
                "eta": eta,
                "direction": g["direction"],
                "passed": bool(g["passed"]),
                "reasons": g["reasons"],
                "report": judge["html"],
                "hardened": judge["hardened"],
            }
        )
    return {"teachers": teachers, "attacks": list(attacks.values()), "gates": gates}


def table(s: dict[str, Any]) -> list[str]:
    """The summary as terminal lines (fits one screen)."""
    etas = [t["teacher"] for t in s["teachers"][1:]]
    lines = ["", f"{'teacher':<22}{'accuracy':>10}{'retention':>11}"]
    lines += [f"{t['teacher']:<22}{t['accuracy']:>10.3f}{t['retention']:>11.3f}" for t in s["teachers"]]
    head = f"{'attack: student accuracy':<26}{'<- original':>12}" + "".join(
        f"{'<- ' + e + ' (transfer)':>26}" for e in etas
    )
    lines += ["", head]
    for a in s["attacks"]:
        cells = "".join(
            f"{a[e]['accuracy']:>17.3f} ({a[e]['transfer']:.2f})"
            if a[e]["transfer"] is not None
            else f"{a[e]['accuracy']:>17.3f} (  - )"
            for e in etas
        )
        lines.append(f"{a['attack']:<26}{a['original']:>12.3f}{cells}")
    lines.append("")
    for g in s["gates"]:
        verdict = "PASSED" if g["passed"] else "FAILED"
        lines.append(f"gate eta={g['eta']:+g} ({g['direction']}): {verdict}: {'; '.join(g['reasons'])}")
    for g in s["gates"]:
        lines.append(f"report eta={g['eta']:+g}: {g['report']}")
    hardened = [g["hardened"] for g in s["gates"] if g["hardened"]]
    if hardened:
        lines.append(f"hardened model: {hardened[0]}")
    elif any(g["passed"] for g in s["gates"] if g["direction"] == "undistillable"):
        lines.append("hardened model: none published (the gate passed; publish is off)")
    else:
        lines.append("hardened model: none published (no undistillable gate passed)")
    return lines


def run(cfg: dict[str, Any], store_root: str, out: Path, workers: int, echo: Callable[[str], None]) -> dict:
    """Run the experiment ``cfg`` on ``workers`` processes; its summary (also written to ``out/summary.json``).
    The runner's logs go to ``out/<name>.log``; ``echo`` gets one line per task."""
    from dg_core import store

    log = out / f"{cfg.get('name', 'experiment')}.log"
    _attack_jobs(cfg)  # a bad attack fails here, before anything runs
    backend, key = store.open_store(store_root)
    root = backend.uri(key)
    (out / "kfp").mkdir(parents=True, exist_ok=True)
    log.write_text("")
    echo(f"{cfg.get('name', 'experiment')}: {len(cfg['etas'])} calibrations x {len(cfg['attacks'])} attacks; "
         f"store {root}; log {log}")  # fmt: skip
    t0 = time.monotonic()
    results = run_graph(plan(cfg, root), workers, (str(log), root, str(out / "kfp")), echo)
    s = summary(cfg, results)
    s["seconds"] = time.monotonic() - t0
    s["results"] = results
    (out / "summary.json").write_text(json.dumps(s, indent=2, default=str))
    return s


def reseed(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The same experiment under another seed: the data, both bootstraps, every calibration and every attack's
    seeds shift by ``seed`` (``--seed``: the demo's bars must hold whatever it is)."""
    import copy

    out = copy.deepcopy(cfg)
    out["prep"]["seed"] = out["prep"].get("seed", 0) + seed
    for role in ("teacher", "proxy"):
        if out[role].get("train"):
            out[role]["train"]["seed"] = out[role]["train"].get("seed", 0) + seed
    out["calibrate"]["seed"] = out["calibrate"].get("seed", 0) + seed
    out["attacks"] = [{**a, "seeds": [x + seed for x in a.get("seeds", [0])]} for a in out["attacks"]]
    return out


def main(argv: list[str] | None, configs: list[Path], small: Path, prog: str, doc: str) -> int:
    """The command line of an experiment (``make demo``): settings files, --small, key=JSON overrides."""
    ap = argparse.ArgumentParser(prog=prog, description=doc)
    ap.add_argument("--config", action="append", default=None, help=f"settings YAML (default {configs[-1].name})")
    ap.add_argument("--store", default=None, help="store root (default $DG_STORE_ROOT or ./.dg/store)")
    ap.add_argument("--dir", default=".dg/demo", help="log file, kfp.local outputs and summary.json go here")
    ap.add_argument("--workers", type=int, default=2, help="processes running tasks side by side")
    ap.add_argument("--small", action="store_true", help=f"reduced sizes ({small.name}): the graph, not the knob")
    ap.add_argument("--seed", type=int, default=0, help="shift every seed (data, bootstraps, calibration, attacks)")
    ap.add_argument("overrides", nargs="*", help="settings as key.sub=JSON (see the settings YAML)")
    args = ap.parse_args(argv)
    from dg_core import store

    out = Path(args.dir).resolve()
    files = [Path(c) for c in args.config] if args.config else list(configs)
    name = "demo"
    try:
        cfg = load_settings(*files, *([small] if args.small else []), overrides=args.overrides)
        cfg = reseed(cfg, args.seed) if args.seed else cfg
        name = cfg.get("name", name)
        s = run(cfg, args.store or store.default_root(), out, args.workers, lambda x: print(x, flush=True))
    except DGError as e:
        print(f"{name} failed: {e}\nlog: {out / (name + '.log')}", file=sys.stderr)
        return 2
    for line in table(s):
        print(line)
    print(f"{name}: {_fmt_secs(s['seconds'])} wall; summary {out / 'summary.json'}; log {out / (name + '.log')}")
    return 0
