"""`dguard run <pipeline> --local [key=value ...]`: run a pipeline on this machine with kfp.local.

The same pipeline definition as on a cluster runs under ``kfp.local.SubprocessRunner(use_venv=False)``: every
task is a subprocess of this Python environment, models come from the offline zoo, and artifacts go to the
embedded file store (``$DG_STORE_ROOT`` or ``./.dg/store``). kfp-kubernetes settings (GPU placement, Secrets) are
ignored locally, as they should be. Local runs start from small settings (:data:`LOCAL_DEFAULTS`) so they finish
in minutes on a laptop CPU; any ``key=value`` given wins over them, and the arguments are typed and checked
against the compiled pipeline before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pipelines
from dg_core.errors import DGError
from pipelines._args import parse_arguments

#: Small settings for local runs on a CPU (the compiled defaults are sized for a GPU cluster). They make a run
#: finish in minutes, not show the knob's full effect: the teacher gets a short bootstrap SFT, and calibration's
#: own retention check is relaxed so the run always reaches the attack suite, the report and the release gate
#: (which still applies min_retention). bench/knob.py measures the knob with sound teachers and long attacks.
_SMALL_HARDEN: dict[str, Any] = {
    "prep_options": {"n": 400},
    "calibrate_options": {"min_retention": 0.0, "preflight_accuracy": 0.0, "eval_n": 32, "sampled_k": 2},
    "calibrate_steps": 4,
    "group_size": 4,
    "eval_limit": 32,
    "eval_options": {"k": 0},
    "attack_steps": 60,
    "attack_limit": 64,
    "attack_batch_size": 16,
    "attack_max_new_tokens": 48,
}
LOCAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "calibrate": {
        **_SMALL_HARDEN,
        "teacher_sft_steps": 300,
        "teacher_sft_options": {"batch_size": 32, "warmup_steps": 20},
    },
    "reharden": dict(_SMALL_HARDEN),
    "diagnose": {"limit": 16, "prep_options": {"n": 400}},
}


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options of `dguard run`."""
    parser.add_argument("pipeline", help=f"pipeline name ({', '.join(pipelines.PIPELINES)})")
    parser.add_argument("--local", action="store_true", help="run here with kfp.local (the only mode of `run`)")
    parser.add_argument("--store", default=None, help="store root (default $DG_STORE_ROOT or ./.dg/store)")
    parser.add_argument("--outputs", default=None, help="kfp.local task outputs (default <cwd>/.dg/kfp)")
    parser.add_argument("--no-cache", action="store_true", help="do not reuse cached task results")
    parser.add_argument("overrides", nargs="*", help="pipeline arguments as key=value")


class _Tee(io.TextIOBase):
    """Pass output through while remembering the one-line errors components raised."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.failures: list[str] = []
        self._buf = ""

    def write(self, s: str) -> int:
        self.stream.write(s)
        self._buf += s
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            m = re.search(r"(?:dg_core\.errors\.)?DGError: (.*)$", line)
            if m:
                self.failures.append(m.group(1).strip())
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def local_arguments(name: str, store_root: str, overrides: list[str]) -> dict[str, Any]:
    """Arguments of a local run: store root, small defaults, then the user's key=value (typed by the package)."""
    from dg_core import store

    args: dict[str, Any] = {"store_root": store_root, **LOCAL_DEFAULTS.get(name, {})}
    if name == "reharden":
        args["releases_prefix"] = store.join(store_root, "releases")
        args["hardened_prefix"] = store.join(store_root, "hardened")
    args.update(parse_arguments(pipelines.compiled_path(name), overrides))
    return args


def run_local(name: str, arguments: dict[str, Any], outputs_dir: Path, *, cache: bool = True) -> dict[str, Any]:
    """Run pipeline ``name`` with kfp.local; returns {"output": pipeline output or None, "run_dir": Path}."""
    import logging
    import warnings

    from kfp import local

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DG_THREADS", "1")  # kfp.local runs up to two tasks at once
    outputs_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in outputs_dir.iterdir()}
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(outputs_dir),
        enable_caching=cache,
        cache_root=str(outputs_dir / ".cache"),
    )
    tee = _Tee(sys.stdout)
    with warnings.catch_warnings(), contextlib.redirect_stdout(tee):
        warnings.simplefilter("ignore", RuntimeWarning)  # "non-Python base image": our image is Python
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner")  # k8s settings
        logging.getLogger("root").setLevel(logging.INFO)
        try:
            task = pipelines.load(name)(**arguments)
        except RuntimeError as e:
            detail = f": {tee.failures[-1]}" if tee.failures else ""
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # kfp.local colours its messages
            raise DGError(f"{plain}{detail}") from None
    new = sorted(p for p in outputs_dir.iterdir() if p.name not in before and p.is_dir())
    try:
        output = task.output
    except (AttributeError, ValueError):
        output = None
    return {"output": output, "run_dir": new[-1] if new else outputs_dir}


def main(args: argparse.Namespace, verb: str = "run") -> int:
    """Run one pipeline locally and say where its report is."""
    from dg_core import store

    pipelines.check_name(args.pipeline)
    if not args.local:
        raise DGError(
            f"dguard run {args.pipeline}: pass --local to run here, or use `dguard submit {args.pipeline} --host URL`"
        )
    backend, key = store.open_store(args.store or store.default_root())
    store_root = backend.uri(key)
    arguments = local_arguments(args.pipeline, store_root, args.overrides)
    outputs_dir = Path(args.outputs) if args.outputs else Path.cwd() / ".dg" / "kfp"
    t0 = time.monotonic()
    result = run_local(args.pipeline, arguments, outputs_dir, cache=not args.no_cache)
    took = time.monotonic() - t0
    print(f"\n{args.pipeline}: finished in {took:.0f}s; task outputs under {result['run_dir']}")
    for line in outcome(result["run_dir"]):
        print(line)
    return 0


def outcome(run_dir: Path) -> list[str]:
    """What a finished local run produced, read from kfp.local's task outputs: report, gate, publication."""
    import json

    lines = []
    for p in sorted(run_dir.rglob("list-releases/summary")):
        lines.append(p.read_text().strip())
    for p in sorted(run_dir.rglob("calibrate/card")):
        head = p.read_text().strip().splitlines()
        if head and head[0].startswith("# Calibration refused"):
            lines.append("calibration refused the teacher: " + " ".join(head[1:]).strip())
    for p in sorted(run_dir.rglob("gate/summary")):
        lines.append(p.read_text().strip().splitlines()[0].lstrip("# "))
    for p in sorted(run_dir.rglob("publish/hardened")):
        lines.append(f"hardened model: {json.loads(p.read_text())['uri']}")
    for p in sorted(run_dir.rglob("report/html")):
        lines.append(f"report: {p}")
    for p in sorted(run_dir.rglob("diagnose/html")):
        lines.append(f"diagnosis report: {p}")
    return lines
