"""Placement, credentials and caching applied to pipeline tasks (kfp-kubernetes), in one place.

Every setting that varies per cluster comes from a pipeline parameter, so one compiled package serves every
cluster: the CPU and CUDA images (`image`, `gpu_image`), GPU type/count (`accelerator_type`, `accelerator_count`), node selector and tolerations (the
kfp-kubernetes `_json` variants, which take parameters), the S3 credentials Secret and the settings ConfigMap
the Helm chart creates. `kfp.local` ignores all of it, as it should.
"""

from __future__ import annotations

from typing import Any

from kfp import kubernetes

from components._common import ENV_CONFIG_KEYS, S3_SECRET_KEYS


def with_store(task: Any, s3_secret: Any, env_config_map: Any, image: Any) -> Any:
    """The task's image (a parameter, so a mirror registry needs no recompile), and S3 credentials (Secret) and
    endpoint settings (ConfigMap) as environment variables; both optional, so IRSA/workload identity and
    anonymous endpoints work without them."""
    task.set_container_image(image)
    kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=S3_SECRET_KEYS, optional=True)
    kubernetes.use_config_map_as_env(
        task, config_map_name=env_config_map, config_map_key_to_env=ENV_CONFIG_KEYS, optional=True
    )
    return task


def on_gpu(
    task: Any, accelerator_type: Any, accelerator_count: Any, node_selector: Any, tolerations: Any, image: Any
) -> Any:
    """Put a training/inference task on the GPU pool, in the CUDA image (the components default to the CPU one)."""
    task.set_container_image(image)
    task.set_accelerator_type(accelerator_type)
    task.set_accelerator_limit(accelerator_count)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    return task


def cached(task: Any, enable: bool = True) -> Any:
    """Caching set explicitly on every task: on for stages (their inputs pin content hashes), off for the tasks
    that look at mutable state (pinning references, listing releases, publishing)."""
    task.set_caching_options(enable_caching=enable)
    return task


def renamed(component: Any, name: str) -> Any:
    """The same component under another task name.

    kfp 2.17 merges a sub-pipeline's kubernetes settings by executor label *before* renaming clashing labels, so
    two tasks of the same name in a pipeline and its sub-pipeline (e.g. `evaluate`) end up sharing one executor's
    settings, nondeterministically. Task names unique across nesting levels avoid it (a test checks).
    """
    import copy

    c = copy.deepcopy(component)
    c.component_spec.name = name
    return c
