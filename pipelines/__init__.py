"""Kubeflow pipelines of distillation-guards and the `dguard` verbs that compile, run and submit them.

The pipeline definitions import kfp; dg_core never does. Every pipeline has one compiled package,
``pipelines/compiled/<name>.yaml``, kept in sync with its source by a test; the remote verbs submit that file,
so what runs on a cluster is exactly what was reviewed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from dg_core.errors import DGError

#: pipeline name -> module defining it (the module exposes ``PIPELINE``, the @dsl.pipeline object).
PIPELINES: dict[str, str] = {
    "diagnose": "pipelines.diagnose",
    "calibrate": "pipelines.calibrate",
    "reharden": "pipelines.reharden",
}

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def check_name(name: str) -> str:
    """Fail with one line when ``name`` is not a pipeline of this package."""
    if name not in PIPELINES:
        raise DGError(f"unknown pipeline {name!r}: expected one of {', '.join(PIPELINES)}")
    return name


def compiled_path(name: str) -> Path:
    """Where the compiled package of pipeline ``name`` lives (the file `kfp run create --package-file` takes)."""
    return COMPILED_DIR / f"{check_name(name)}.yaml"


def load(name: str) -> Any:
    """The @dsl.pipeline object of pipeline ``name`` (imports kfp)."""
    return importlib.import_module(PIPELINES[check_name(name)]).PIPELINE
