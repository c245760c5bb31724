"""Run one stage as a Kubeflow Trainer TrainJob (multi-node) through the kubeflow SDK's ``TrainerClient``.

The single-pod path (dg_core.launch.run_stage) stays the default; this one is for a calibrate or distill task that
needs more than one node. The task's pod creates a TrainJob on a torch runtime (``torch-distributed`` by default:
torchrun on every node, one process per GPU), streams its logs, waits for it, and fails with one line naming the
rank and its error (or the TrainJob's own reason). Every node runs :func:`dguard_stage_node`, i.e.
``dg_core.launch.worker.node``: rank 0 publishes to the store and prints its summary on a marked line; the task
reads the summary back and checks that the outputs it names are in the store.

The TrainJob's pods get the run's image and the non-secret store settings (endpoint, region, store root, metrics
URL) as environment variables. Credentials are never copied into the TrainJob (its spec is readable by anyone who
can list TrainJobs): the pods take them from their ServiceAccount (IRSA / Workload Identity, see the chart) or from
the runtime's own env.

Tests run it end to end with the SDK's LocalProcessBackend (``client=local_client(...)``), and validate the
manifest the KubernetesBackend would send (:func:`manifest`) against the TrainJob CRD's schema.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from dg_core import store
from dg_core.config import from_dict
from dg_core.errors import DGError
from dg_core.launch import LaunchError
from dg_core.launch.worker import ERROR_MARK, SUMMARY_MARK
from dg_core.stages import get_stage

log = logging.getLogger("dguard.launch.trainjob")

DEFAULT_RUNTIME = "torch-distributed"
#: Settings a TrainJob node needs to reach the same store and metrics as the task (never credentials).
FORWARD_ENV = (
    "DG_STORE_ROOT",
    "AWS_ENDPOINT_URL",
    "MINIO_ENDPOINT",
    "AWS_REGION",
    "S3_VERIFY_SSL",
    "DG_S3_CREATE_BUCKET",
    "DG_PUSHGATEWAY_URL",
    "DG_RUN_ID",
    "DG_TASK",
    "HF_HUB_OFFLINE",
    "DG_LOG_LEVEL",
)
#: Summary fields that name an artifact rank 0 published.
OUTPUT_KEYS = ("model", "card", "uri")


def dguard_stage_node(params=None, **kwargs):  # noqa: ANN001, ANN003 - shipped as source: no names it lacks
    """The TrainJob's entry point on every node (its source is shipped in the TrainJob's command).

    The local backend calls it with the arguments as one dict, the Kubernetes backend with keyword arguments.
    """
    import sys

    from dg_core.launch import worker  # shipped as source: the function carries its own imports

    p = params or kwargs
    code = worker.node(p["stage"], p["config"])
    if code:
        sys.exit(code)


def forward_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The non-secret settings of this process a TrainJob node needs, plus ``extra``."""
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
    return {**env, **(extra or {})}


def _trainer(
    name: str,
    params: Mapping[str, Any],
    num_nodes: int,
    gpus_per_node: int,
    image: str | None,
    env: Mapping[str, str] | None,
    packages: list[str] | None,
) -> Any:
    from kubeflow.trainer import CustomTrainer

    if num_nodes < 1:
        raise DGError(f"num_nodes={num_nodes}: expected >= 1")
    if gpus_per_node < 0:
        raise DGError(f"gpus_per_node={gpus_per_node}: expected >= 0 (0: CPU nodes)")
    cfg = from_dict(get_stage(name).load().Config, dict(params))  # bad input fails here, before a TrainJob exists
    return CustomTrainer(
        func=dguard_stage_node,
        func_args={"stage": name, "config": json.loads(json.dumps(cfg.to_dict(), default=str))},
        image=image or None,
        num_nodes=num_nodes,
        resources_per_node={"gpu": gpus_per_node} if gpus_per_node else None,
        env=dict(env) if env else None,
        packages_to_install=packages or None,
    )


def manifest(
    name: str,
    params: Mapping[str, Any],
    *,
    num_nodes: int,
    gpus_per_node: int,
    runtime: str = DEFAULT_RUNTIME,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    job_name: str = "dguard-stage",
) -> dict[str, Any]:
    """The TrainJob the SDK's KubernetesBackend sends for this stage (built offline, without a cluster)."""
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend
    from kubeflow.trainer.constants import constants
    from kubeflow.trainer.types import types
    from kubeflow_trainer_api import models

    trainer = _trainer(name, params, num_nodes, gpus_per_node, image, env, None)
    rt = types.Runtime(
        name=runtime,
        kind=types.RuntimeKind.CLUSTER_TRAINING_RUNTIME,
        trainer=types.RuntimeTrainer(
            trainer_type=types.TrainerType.CUSTOM_TRAINER, framework="torch", image=image or "unknown"
        ),
    )
    rt.trainer.set_command(constants.TORCH_COMMAND)  # what the torch-distributed runtime's trainer runs
    backend = object.__new__(KubernetesBackend)  # its spec builder needs no cluster when given the runtime
    spec = backend._get_trainjob_spec(runtime=rt, trainer=trainer)
    job = models.TrainerV1alpha1TrainJob(
        apiVersion=constants.API_VERSION,
        kind=constants.TRAINJOB_KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=job_name),
        spec=spec,
    )
    return job.to_dict()


def local_client(cleanup_venv: bool = True) -> Any:
    """A TrainerClient on the SDK's local process backend (runs the TrainJob as local processes)."""
    from kubeflow.trainer import LocalProcessBackendConfig, TrainerClient

    return TrainerClient(backend_config=LocalProcessBackendConfig(cleanup_venv=cleanup_venv))


def _is_local(client: Any) -> bool:
    from kubeflow.trainer.backends.localprocess.backend import LocalProcessBackend

    return isinstance(getattr(client, "backend", None), LocalProcessBackend)


def _reason(client: Any, job: str, lines: list[str]) -> str:
    """One line: the failed rank's own error, else the TrainJob's last warning event, else its status."""
    errors = [ln.split(ERROR_MARK, 1)[1].strip() for ln in lines if ERROR_MARK in ln]
    if errors:
        return errors[0]
    try:
        events = client.get_job_events(job)
    except Exception:  # noqa: BLE001 - the local backend has no events; the reason then falls back to the status
        events = []
    for ev in reversed(events or []):
        msg = getattr(ev, "message", "")
        if msg:
            return f"TrainJob {job}: {getattr(ev, 'reason', '')} {msg}".strip()
    tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return f"TrainJob {job} failed" + (f" (last log line: {tail[:200]})" if tail else "")


def run_stage(
    name: str,
    params: Mapping[str, Any],
    *,
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    runtime: str = DEFAULT_RUNTIME,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    packages: list[str] | None = None,
    client: Any = None,
    timeout: int = 7 * 24 * 3600,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run stage ``name`` as a TrainJob; returns rank 0's summary once its outputs are in the store.

    ``client`` defaults to a TrainerClient on the cluster the pod runs in (KubernetesBackend). ``env`` is the
    nodes' full environment (default: :func:`forward_env`).
    """
    from kubeflow.trainer.constants import constants

    trainer = _trainer(name, params, num_nodes, gpus_per_node, image, forward_env() if env is None else env, packages)
    if client is None:
        from kubeflow.trainer import TrainerClient

        client = TrainerClient()
    try:
        job = client.train(runtime=client.get_runtime(runtime), trainer=trainer)
    except (ValueError, RuntimeError) as e:
        raise DGError(f"TrainJob for stage {name} on runtime {runtime!r} could not be created: {e}") from None
    log.info("created TrainJob %s (%d node(s) x %d GPU(s), runtime %s)", job, num_nodes, gpus_per_node, runtime)
    done = {constants.TRAINJOB_COMPLETE, constants.TRAINJOB_FAILED}
    client.wait_for_job_status(job, status={constants.TRAINJOB_RUNNING, *done}, timeout=timeout)
    lines: list[str] = []
    local = _is_local(client)  # the local backend echoes the logs itself while following them
    for chunk in client.get_job_logs(job, follow=True):
        for ln in str(chunk).splitlines():
            lines.append(ln)
            if not local:
                echo(ln)
    final = client.wait_for_job_status(job, status=done, timeout=timeout)
    if final.status != constants.TRAINJOB_COMPLETE:
        raise LaunchError(f"stage {name}: {_reason(client, job, lines)}")
    marked = [ln.split(SUMMARY_MARK, 1)[1] for ln in lines if SUMMARY_MARK in ln]
    if not marked:
        raise LaunchError(f"stage {name}: TrainJob {job} completed but rank 0 printed no summary")
    summary = json.loads(marked[-1])
    for key in OUTPUT_KEYS:
        uri = summary.get(key)
        if isinstance(uri, str) and uri.startswith(("s3://", "file://")) and not store.is_published(uri):
            raise LaunchError(f"stage {name}: rank 0 reported {key}={uri} but the store does not hold it")
    summary["trainjob"] = {"name": job, "runtime": runtime, "num_nodes": num_nodes, "gpus_per_node": gpus_per_node}
    return summary
