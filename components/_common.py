"""What every component shares: the image, pinned references, and turning a stage's summary into KFP outputs.

Components are thin: they build a stage's ``Config`` from their parameters (``dg_core.config.from_dict``), call
``run`` and write KFP outputs. Models and datasets never travel through KFP's artifact passing; they stay in the
store and move between tasks as **pinned references**, ``<store uri>#sha256=<content sha>``:

- the sha is part of every downstream task's inputs, so KFP's cache can never serve a result computed from other
  weights than the ones the URI holds now (a mutable ``s3://models/latest`` re-published with new weights gets a
  new sha, hence a cache miss);
- a consumer re-checks the sha before use and fails with one line if the artifact changed under it.

Each producer also writes a small KFP artifact (``Model``/``Dataset``/``Artifact``) whose file holds
``{"uri": ..., "sha256": ...}`` and whose metadata repeats it, for lineage in the Kubeflow UI.

This module is imported *inside* component functions (they run in the image, where this package is installed)
and by the pipeline definitions; it imports neither kfp nor torch at module level.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from dg_core import __version__
from dg_core.runner import run_stage  # noqa: F401 (what every component calls)
from dg_core.store import content_sha, is_store_uri
from dg_core.store import output_uri as _output_uri

#: The CPU image (lightweight components run here; `kfp.local` runs the same code in-process).
IMAGE = f"ghcr.io/distillation-guards/dguard:{__version__}"
#: The CUDA image, for tasks placed on GPU nodes.
IMAGE_CUDA = f"ghcr.io/distillation-guards/dguard:{__version__}-cuda"

PIN = "#sha256="
#: Secret keys mapped 1:1 to environment variables (the Helm chart's Secret uses exactly these keys).
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
#: Non-secret settings from the chart's ConfigMap.
ENV_CONFIG_KEYS = {
    k: k for k in ("AWS_ENDPOINT_URL", "AWS_REGION", "S3_VERIFY_SSL", "DG_PUSHGATEWAY_URL", "DG_S3_CREATE_BUCKET")
}

log = logging.getLogger("dguard.components")


def setup(store_root: str) -> None:
    """Per-task environment: the store root every stage publishes under, logging, offline-by-default hub."""
    logging.basicConfig(level=os.environ.get("DG_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    if store_root:
        os.environ["DG_STORE_ROOT"] = store_root


def pin(ref: str) -> str:
    """A pinned reference for ``ref``: ``zoo:<name>`` is built into the store first; store URIs get their sha.

    Anything else (a hub id) is returned unchanged: it cannot be verified offline, so pin a revision upstream.
    """
    ref = ref.strip()
    if PIN in ref:
        uri, want = ref.split(PIN, 1)
        have = content_sha(uri)
        if have != want:
            from dg_core.errors import DGError

            raise DGError(f"{uri}: content sha256 is {have[:16]}..., the reference pins {want[:16]}...")
        return ref
    from dg_core.models.resolve import is_zoo, to_uri

    if is_zoo(ref):
        ref = to_uri(ref)
    elif not is_store_uri(ref):
        if ref.startswith("/"):
            from pathlib import Path

            ref = Path(ref).as_uri()
        else:
            log.warning("reference %s is not in the store: it is passed unpinned", ref)
            return ref
    from dg_core import store

    ref = store.import_plain(ref)  # a plain HF folder synced into the bucket is imported (pinned) first
    return f"{ref}{PIN}{content_sha(ref)}"


def unpin(ref: str) -> str:
    """The URI of a pinned reference, after checking the artifact still has the pinned content."""
    if not ref or PIN not in ref:
        return ref
    return pin(ref).split(PIN, 1)[0]


def uri_of(ref: str) -> str:
    """The URI part of a (possibly pinned) reference, without touching the store."""
    return ref.split(PIN, 1)[0]


def output_uri(store_root: str, stage: str, inputs: dict[str, Any]) -> str:
    """Where a component's stage publishes: ``<store_root>/runs/<stage>/<key>`` (:func:`dg_core.store.output_uri`)."""
    return _output_uri(f"runs/{stage}", inputs, root=store_root or None)


def placement(
    num_processes: int, launch_strategy: str, num_nodes: int, trainer_runtime: str, trainer_image: str
) -> dict[str, Any]:
    """Where a training component's stage runs, as :func:`run_stage` keyword arguments.

    One node: ``num_processes`` processes here (one per GPU of the task) under ``launch_strategy``. Several: a
    Kubeflow Trainer TrainJob of ``num_nodes`` x ``num_processes`` GPUs that this task only follows.
    """
    trainjob = None
    if num_nodes > 1:
        trainjob = {
            "num_nodes": num_nodes,
            "gpus_per_node": num_processes,
            "runtime": trainer_runtime,
            "image": trainer_image,
        }
    return {"num_processes": num_processes, "strategy": launch_strategy, "trainjob": trainjob}


def write_ref(artifact: Any, uri: str, **metadata: Any) -> str:
    """Write ``{"uri", "sha256"}`` into a KFP output artifact (file + metadata); return the pinned reference."""
    sha = content_sha(uri)
    body = {"uri": uri, "sha256": sha, **metadata}
    os.makedirs(os.path.dirname(artifact.path) or ".", exist_ok=True)
    with open(artifact.path, "w") as f:
        json.dump(body, f, indent=2, sort_keys=True, default=str)
    artifact.metadata.update(json.loads(json.dumps(body, default=str)))
    return f"{uri}{PIN}{sha}"


def read_ref(artifact: Any) -> str:
    """The pinned reference held in a KFP artifact written by :func:`write_ref`."""
    with open(artifact.path) as f:
        body = json.load(f)
    return f"{body['uri']}{PIN}{body['sha256']}"


def log_metrics(metrics: Any, summary: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Log every finite numeric scalar of a (nested) summary as a KFP metric; returns what was logged."""
    import math

    out: dict[str, float] = {}

    def walk(d: dict[str, Any], pre: str) -> None:
        for k, v in d.items():
            name = f"{pre}{k}"
            if isinstance(v, dict):
                walk(v, f"{name}.")
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                out[name] = float(v)

    walk(summary, prefix)
    for k, v in sorted(out.items()):
        metrics.log_metric(k, v)
    return out


def write_text(artifact: Any, text: str) -> None:
    os.makedirs(os.path.dirname(artifact.path) or ".", exist_ok=True)
    with open(artifact.path, "w") as f:
        f.write(text)
