"""Placement, credentials, resources, retries, caching and run identity of pipeline tasks, in one place.

Every setting that varies per cluster and that KFP can take at run time is a pipeline parameter (declared in
``pipelines/_params.py``), so one compiled package serves every cluster: the CPU and CUDA images, GPU type/count,
node selector and tolerations (the kfp-kubernetes ``_json`` variants, which take parameters), CPU/memory requests
and limits per task class, the S3 credentials Secret and the settings ConfigMap the Helm chart creates.

What kfp 2.17 can only write into the IR as a literal (retry policy, the attack loop's ``parallelism``, the size
of the ephemeral cache volume, pod labels, image pull secrets) is a **compile option**, :class:`CompileOptions`,
with a sane default here: ``dguard compile --option attack_parallelism=8`` (or ``dguard upload --option ...``)
builds a package with other values. `kfp.local` ignores all of it, as it should.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kfp import kubernetes

from components._common import ENV_CONFIG_KEYS, S3_SECRET_KEYS
from dg_core.config import StageConfig, option

#: Where the images keep HF_HOME and DG_CACHE_DIR (images/Dockerfile.*): the cache volume is mounted here.
CACHE_MOUNT = "/home/dguard/.cache"
#: Tasks that write mutable state (a published twin, a rejection record): never retried automatically.
NOT_IDEMPOTENT = frozenset({"publish", "reject", "reject-calibration"})
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass
class CompileOptions(StageConfig):
    retries: int = option(2, "Retries of every idempotent task (all but publish/reject) after a failure.", ge=0)
    retry_backoff: str = option("30s", "Wait before the first retry; multiplied by retry_backoff_factor each time.")
    retry_backoff_factor: float = option(2.0, "Backoff growth per retry.", ge=1)
    retry_backoff_max: str = option("15m", "Longest wait between two retries.")
    attack_parallelism: int = option(
        4, "Attacks of the suite run at once (each runs 2 distill and 3 evaluate GPU tasks); 0: no cap.", ge=0
    )
    cache_size: str = option(
        "50Gi", "Ephemeral volume per GPU task for the model/HF cache (generic ephemeral PVC); '': no volume."
    )
    cache_storage_class: str = option("", "StorageClass of the cache volume ('': the cluster's default).")
    kueue_queue: str = option("", f"Kueue LocalQueue: sets the {KUEUE_LABEL} label on every task pod ('': none).")
    image_pull_secrets: list[str] = option([], "Image pull secrets of every task pod (e.g. [regcred]).")


#: The options the pipeline modules are built with (see :func:`compile_options`).
OPTIONS = CompileOptions()


@contextlib.contextmanager
def compile_options(options: CompileOptions) -> Iterator[None]:
    """Build the pipeline modules with ``options`` inside the block (kfp builds a pipeline at import time)."""
    global OPTIONS
    previous, OPTIONS = OPTIONS, options
    try:
        _reload()
        yield
    finally:
        OPTIONS = previous
        _reload()


def _reload() -> None:
    for name in ("pipelines.calibrate", "pipelines.reharden", "pipelines.diagnose"):  # calibrate first: shared
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def with_store(task: Any, s3_secret: Any, env_config_map: Any, image: Any) -> Any:
    """The task's image (a parameter, so a mirror registry needs no recompile), S3 credentials (Secret) and
    endpoint settings (ConfigMap) as environment variables (both optional, so IRSA/workload identity and anonymous
    endpoints work without them), its run identity for metrics, and the cluster-wide compile options."""
    task.set_container_image(image)
    kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=S3_SECRET_KEYS, optional=True)
    kubernetes.use_config_map_as_env(
        task, config_map_name=env_config_map, config_map_key_to_env=ENV_CONFIG_KEYS, optional=True
    )
    identify(task)
    if OPTIONS.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(OPTIONS.image_pull_secrets))
    if OPTIONS.kueue_queue:
        kubernetes.add_pod_label(task, KUEUE_LABEL, OPTIONS.kueue_queue)
    return task


def identify(task: Any) -> Any:
    """Run and task identity for dg_core.metrics, from the pod itself (the Downward API).

    ``DG_RUN_ID`` is the KFP run UUID: the API server labels every pod of a run ``pipeline/runid=<run id>`` (the
    value ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` resolves to). KFP resolves its placeholders only in task inputs,
    and an input that changes every run would defeat the cache, so the label is read instead. ``DG_TASK`` is the
    task's name in the pipeline; ``DG_ATTEMPT`` the pod name, unique per attempt (a retry is a new pod) and per
    iteration of a ParallelFor.
    """
    kubernetes.use_field_path_as_env(task, "DG_RUN_ID", "metadata.labels['pipeline/runid']")
    kubernetes.use_field_path_as_env(task, "DG_ATTEMPT", "metadata.name")
    task.set_env_variable("DG_TASK", task.name)
    return task


def sized(task: Any, cpu_request: Any, cpu_limit: Any, memory_request: Any, memory_limit: Any) -> Any:
    """CPU and memory requests and limits (pipeline parameters, per task class)."""
    task.set_cpu_request(cpu_request)
    task.set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request)
    task.set_memory_limit(memory_limit)
    return task


def on_gpu(
    task: Any, accelerator_type: Any, accelerator_count: Any, node_selector: Any, tolerations: Any, image: Any
) -> Any:
    """Put a training/inference task on the GPU pool, in the CUDA image (the components default to the CPU one),
    with an ephemeral volume for the model cache (models are downloaded there, not into the container layer)."""
    task.set_container_image(image)
    task.set_accelerator_type(accelerator_type)
    task.set_accelerator_limit(accelerator_count)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    if OPTIONS.cache_size:
        kubernetes.add_ephemeral_volume(
            task,
            volume_name="model-cache",
            mount_path=CACHE_MOUNT,
            access_modes=["ReadWriteOnce"],
            size=OPTIONS.cache_size,
            storage_class_name=OPTIONS.cache_storage_class or None,
        )
    return task


def cached(task: Any, enable: bool = True) -> Any:
    """Caching set explicitly on every task: on for stages (their inputs pin content hashes), off for the tasks
    that look at mutable state (pinning references, listing releases, publishing). Every idempotent task also
    gets the retry policy (a preempted node or a flaky S3 endpoint should not fail an overnight run)."""
    task.set_caching_options(enable_caching=enable)
    if OPTIONS.retries and task.component_spec.name.replace("_", "-") not in NOT_IDEMPOTENT:
        task.set_retry(
            num_retries=OPTIONS.retries,
            backoff_duration=OPTIONS.retry_backoff,
            backoff_factor=OPTIONS.retry_backoff_factor,
            backoff_max_duration=OPTIONS.retry_backoff_max,
        )
    return task


def renamed(component: Any, name: str) -> Any:
    """The same component under another task name.

    kfp 2.17 merges a sub-pipeline's kubernetes settings by executor label *before* renaming clashing labels, so
    two tasks of the same name in a pipeline and its sub-pipeline (e.g. `evaluate`) end up sharing one executor's
    settings, nondeterministically. Task names unique across nesting levels avoid it (a test checks).
    """
    c = copy.deepcopy(component)
    c.component_spec.name = name
    return c


#: Parameters every pipeline and sub-pipeline takes for placement, credentials and resources (their defaults
#: and help: pipelines/_params.py). A sub-pipeline receives them from its parent as its own inputs.
INFRA = (
    "store_root",
    "s3_secret",
    "env_config_map",
    "image",
    "gpu_image",
    "accelerator_type",
    "accelerator_count",
    "num_nodes",
    "trainer_runtime",
    "gpu_node_selector",
    "gpu_tolerations",
    "light_cpu_request",
    "light_cpu_limit",
    "light_memory_request",
    "light_memory_limit",
    "gpu_cpu_request",
    "gpu_cpu_limit",
    "gpu_memory_request",
    "gpu_memory_limit",
)


class Place:
    """The infrastructure parameters of one DAG, applied to its tasks: ``at = Place(locals())``."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.args = {k: values[k] for k in INFRA}

    def light(self, task: Any, cache: bool = True) -> Any:
        """A CPU task (pinning, planning, prep, report, gate, publish)."""
        a = self.args
        with_store(task, a["s3_secret"], a["env_config_map"], a["image"])
        sized(task, a["light_cpu_request"], a["light_cpu_limit"], a["light_memory_request"], a["light_memory_limit"])
        return cached(task, cache)

    def gpu(self, task: Any) -> Any:
        """A training/inference task, on the GPU pool in the CUDA image."""
        a = self.args
        with_store(task, a["s3_secret"], a["env_config_map"], a["image"])
        on_gpu(task, a["accelerator_type"], a["accelerator_count"], a["gpu_node_selector"], a["gpu_tolerations"],
               a["gpu_image"])  # fmt: skip
        sized(task, a["gpu_cpu_request"], a["gpu_cpu_limit"], a["gpu_memory_request"], a["gpu_memory_limit"])
        return cached(task)
