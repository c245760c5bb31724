"""One rank of a launched stage: ``python -m dg_core.launch.worker <stage> <config.json>``.

Started by ``accelerate launch`` / torchrun (dg_core.launch) or by a Kubeflow Trainer node (dg_core.launch.trainjob),
it sees RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT. It records itself in ``$DG_LAUNCH_DIR/rank-<r>.json``
(when a launch folder is shared by the ranks), runs the stage (every rank for a ``MULTI_PROCESS`` stage, else
rank 0 only), and rank 0 writes the summary. A failure leaves ``rank-<r>.error`` (one line) and exits 2 for bad
input, 1 for anything else.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from dg_core.config import from_dict
from dg_core.errors import DGError, one_line
from dg_core.stages import get_stage

#: Marked lines of a TrainJob node's log that dg_core.launch.trainjob reads back: rank 0's summary, a rank's error.
SUMMARY_MARK = "DGUARD_SUMMARY "
ERROR_MARK = "DGUARD_ERROR "

#: What a launcher sets that makes accelerate/torch think they are one of several processes.
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
             "ROLE_WORLD_SIZE", "ACCELERATE_USE_CPU")  # fmt: skip


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; a lone process is (0, 1, 0)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(stage: str, config: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    """Run ``stage`` as this rank; returns the summary on rank 0 (None elsewhere)."""

    rank, world, local = env_rank()
    if world > 1 and not _has_cuda():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # accelerate's Accelerator then uses gloo on CPU
    record = {"rank": rank, "world_size": world, "local_rank": local, "pid": os.getpid(), "host": socket.gethostname()}
    if run_dir:
        _write(run_dir / f"rank-{rank}.json", json.dumps(record))
    mod = get_stage(stage).load()
    cfg = from_dict(mod.Config, config)
    aware = bool(getattr(mod, "MULTI_PROCESS", False))
    runs_here = rank == 0 or aware
    if runs_here and not aware:
        # rank 0 runs an unaware stage as the lone process it expects: an Accelerator created inside it must
        # not wait for peers that never join its process group
        for name in _DIST_ENV:
            os.environ.pop(name, None)
    summary = mod.run(cfg) if runs_here else None
    record["ran_stage"] = runs_here
    record["done"] = True
    if run_dir:
        if rank == 0:
            _write(run_dir / "summary.json", json.dumps(summary, default=str, sort_keys=True))
        _write(run_dir / f"rank-{rank}.json", json.dumps(record))
    return summary if rank == 0 else None


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def node(stage: str, config: dict[str, Any]) -> int:
    """One rank of a TrainJob node: no shared launch folder, so rank 0's summary and any rank's error go to the
    log on marked lines (dg_core.launch.trainjob reads them back). Returns the exit code."""
    logging.basicConfig(level=os.environ.get("DG_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    rank, world, _ = env_rank()
    try:
        summary = run(stage, config, None)
    except Exception as e:  # noqa: BLE001 - every failure becomes this rank's one line
        line = str(e) if isinstance(e, DGError) else one_line(e)
        print(f"{ERROR_MARK}rank {rank} of {world} failed: {line}", flush=True)
        return 2 if isinstance(e, DGError) else 1
    if rank == 0:
        print(SUMMARY_MARK + json.dumps(summary, default=str, sort_keys=True), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("DG_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    if len(argv) != 2:
        print("usage: python -m dg_core.launch.worker <stage> <config.json>", file=sys.stderr)
        return 2
    rank = env_rank()[0]
    run_dir = Path(os.environ["DG_LAUNCH_DIR"]) if os.environ.get("DG_LAUNCH_DIR") else None
    try:
        summary = run(argv[0], json.loads(Path(argv[1]).read_text()), run_dir)
    except Exception as e:  # noqa: BLE001 - every failure becomes this rank's one line
        line = str(e) if isinstance(e, DGError) else one_line(e)
        code = 2 if isinstance(e, DGError) else 1
        if run_dir:
            _write(run_dir / f"rank-{rank}.error", line + "\n")
            if code == 2:
                (run_dir / "exit-2").touch()
        print(f"dguard {argv[0]} rank {rank}: error: {line}", file=sys.stderr)
        return code
    if rank == 0 and summary is not None and not run_dir:
        print(json.dumps(summary, indent=2, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
