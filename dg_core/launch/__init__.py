"""Run one stage in N processes (one per GPU of a pod, or across nodes) with ``accelerate launch`` or torchrun.

A task with ``accelerator_count > 1`` reserves that many GPUs; only a launcher that starts one process per GPU
uses them. :func:`run_stage` validates the stage's config here (bad input fails before anything starts), then
starts ``dg_core.launch.worker`` under the launcher. Every rank records who it was (rank, world size, pid, host);
rank 0 writes the stage's JSON summary, which is the result. A rank that fails leaves its error as one line, and
the launch fails with that line, naming the rank.

Stages opt in to running on every rank with a module attribute ``MULTI_PROCESS = True`` (they then use
``accelerate.Accelerator``, read inputs on every rank and write the store from rank 0 only). A stage without it
runs on rank 0 while the other ranks only record themselves, so an unaware stage never has N ranks racing to
publish the same artifact.

The accelerate config files (``configs/<strategy>.yaml``: ``ddp``, ``fsdp``, ``zero3``) ship in the package.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dg_core.config import from_dict
from dg_core.errors import DGError
from dg_core.stages import get_stage

log = logging.getLogger("dguard.launch")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
STRATEGIES = ("ddp", "fsdp", "zero3")
LAUNCHERS = ("accelerate", "torchrun")
#: The worker writes these into the run folder it is given (DG_LAUNCH_DIR).
SUMMARY = "summary.json"
RANK_FILE = "rank-{rank}.json"
ERROR_FILE = "rank-{rank}.error"


class LaunchError(DGError):
    """A rank failed; the message names it and carries its one-line error."""

    exit_code = 1


def config_file(strategy: str) -> Path:
    """The accelerate config file of a strategy (ddp, fsdp, zero3)."""
    if strategy not in STRATEGIES:
        raise DGError(f"launch strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    return CONFIG_DIR / f"{strategy}.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, no CUDA
        return False


def command(
    args: Sequence[str],
    num_processes: int,
    *,
    launcher: str = "accelerate",
    strategy: str = "ddp",
    num_machines: int = 1,
    machine_rank: int = 0,
    main_address: str = "127.0.0.1",
    main_port: int | None = None,
    mixed_precision: str | None = None,
) -> list[str]:
    """The command line that runs ``python -m <args...>`` in ``num_processes`` processes per machine.

    ``args`` is what follows ``python -m`` (a module and its arguments). ``num_processes`` is per machine; the
    world size is ``num_processes * num_machines``. ``mixed_precision`` overrides the config file's (the CPU
    path passes "no").
    """
    if num_processes < 1 or num_machines < 1:
        raise DGError(f"launch: num_processes={num_processes}, num_machines={num_machines}: expected >= 1 each")
    if not 0 <= machine_rank < num_machines:
        raise DGError(f"launch: machine_rank={machine_rank}: expected 0..{num_machines - 1}")
    if launcher not in LAUNCHERS:
        raise DGError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    port = str(main_port or free_port())
    py = sys.executable
    if launcher == "torchrun":
        if strategy != "ddp":
            raise DGError(f"launch strategy {strategy!r} needs launcher=accelerate (torchrun only starts processes)")
        return [
            py, "-m", "torch.distributed.run", f"--nproc_per_node={num_processes}", f"--nnodes={num_machines}",
            f"--node_rank={machine_rank}", f"--master_addr={main_address}", f"--master_port={port}",
            "-m", *args,
        ]  # fmt: skip
    cfg = config_file(strategy)
    if strategy == "zero3":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise DGError("launch strategy 'zero3' needs the deepspeed package (in the CUDA image); use ddp or fsdp")
    total = num_processes * num_machines
    cmd = [
        py, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "--num_processes", str(total),
        "--num_machines", str(num_machines), "--machine_rank", str(machine_rank),
        "--main_process_ip", main_address, "--main_process_port", port, "--dynamo_backend", "no",
    ]  # fmt: skip
    if mixed_precision:
        cmd += ["--mixed_precision", mixed_precision]
    return [*cmd, "-m", *args]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ranks(run_dir: Path) -> list[dict[str, Any]]:
    """The rank records the workers left in ``run_dir``, by rank."""
    recs = [_read_json(p) for p in sorted(run_dir.glob("rank-*.json"))]
    return sorted((r for r in recs if isinstance(r, dict)), key=lambda r: r.get("rank", 0))


def failure(run_dir: Path, world_size: int, returncode: int) -> str:
    """One line saying which rank failed and why (the lowest failed rank's own error line)."""
    errors: dict[int, str] = {}
    for p in run_dir.glob("rank-*.error"):
        try:
            errors[int(p.stem.split("-", 1)[1])] = p.read_text().strip().splitlines()[0]
        except (OSError, ValueError, IndexError):
            continue
    if errors:
        first = min(errors)
        more = sorted(set(errors) - {first})
        tail = f" (ranks {', '.join(map(str, more))} failed too)" if more else ""
        return f"rank {first} of {world_size} failed: {errors[first]}{tail}"
    done = {r.get("rank") for r in ranks(run_dir) if r.get("done")}
    missing = sorted(set(range(world_size)) - done)
    who = f"rank {missing[0]}" if missing else "a rank"
    return f"{who} of {world_size} exited without an error record (launcher exit code {returncode}: killed?)"


def launch(
    args: Sequence[str],
    num_processes: int,
    *,
    env: Mapping[str, str] | None = None,
    run_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    **opts: Any,
) -> Path:
    """Run ``python -m <args>`` under the launcher; returns the run folder the ranks wrote into.

    Raises :class:`LaunchError` naming the failed rank. The ranks' logs go to this process's stdout/stderr.
    """
    opts.setdefault("mixed_precision", None if _has_cuda() else "no")
    cmd = command(args, num_processes, **opts)
    world = num_processes * int(opts.get("num_machines", 1))
    rd = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="dg-launch-"))
    rd.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {}), "DG_LAUNCH_DIR": str(rd)}
    child_env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the pod's cores; the stage may raise it
    log.info("launching %d process(es): %s", world, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=child_env, timeout=timeout)  # the ranks log to this task's stdout/stderr
    except subprocess.TimeoutExpired:
        raise LaunchError(f"launch of {world} processes ran past its timeout of {timeout:.0f}s") from None
    if proc.returncode != 0:
        err = LaunchError(failure(rd, world, proc.returncode))
        if (rd / "exit-2").exists():  # bad input, reported by the rank itself
            err.exit_code = 2
        raise err
    return rd


def run_stage(
    name: str,
    params: Mapping[str, Any],
    num_processes: int,
    *,
    strategy: str = "ddp",
    launcher: str = "accelerate",
    timeout: float | None = None,
    **opts: Any,
) -> dict[str, Any]:
    """Run stage ``name`` with ``params`` in ``num_processes`` processes; rank 0's summary is the result.

    The summary gains ``launch``: the world size and each rank's record (rank, local rank, world size, pid,
    host), so a run shows how many processes it really had.
    """

    cfg = from_dict(get_stage(name).load().Config, dict(params))  # bad input: one line, before any process starts
    rd = Path(tempfile.mkdtemp(prefix=f"dg-launch-{name}-"))
    try:
        (rd / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
        launch(
            ["dg_core.launch.worker", name, str(rd / "config.json")],
            num_processes,
            run_dir=rd,
            timeout=timeout,
            strategy=strategy,
            launcher=launcher,
            **opts,
        )
        summary = _read_json(rd / SUMMARY)
        if not isinstance(summary, dict):
            raise LaunchError(f"stage {name}: rank 0 finished without writing its summary")
        recs = ranks(rd)
        world = recs[0]["world_size"] if recs else num_processes
        summary["launch"] = {"world_size": world, "strategy": strategy, "launcher": launcher, "ranks": recs}
        return summary
    finally:
        shutil.rmtree(rd, ignore_errors=True)
