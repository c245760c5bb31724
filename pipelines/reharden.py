"""reharden: harden every model release that has no hardened twin yet (the recurring run).

list releases under `releases_prefix` without an up-to-date twin under `hardened_prefix` -> for each, the
`harden` sub-graph of the calibrate pipeline in the undistillable direction (prep, calibrate, attack suite,
report, gate) -> publish the hardened model with its calibration card as the twin. Idempotent: with nothing new
the listing step says so and nothing else runs. Schedule it with
`dguard schedule reharden --cron '0 3 * * *' releases_prefix=... hardened_prefix=...`.
"""

# No `from __future__ import annotations`: kfp reads the real annotations of pipeline signatures.

from kfp import dsl

from components.pin.component import pin_models
from components.releases.component import list_releases
from pipelines._k8s import Place
from pipelines._params import parameters, stage_default
from pipelines.calibrate import harden


# fmt: off
@dsl.pipeline(name="dguard-harden-each", description="The harden sub-graph for each pending release.")
@parameters(defaults=False)
def harden_each(
    releases: list[dict],
    proxies: list,
    releases_prefix: str,
    hardened_prefix: str,
    task: str,
    source: str,
    data_seed: int,
    prep_options: dict,
    eta: float,
    beta: float,
    calibrate_steps: int,
    group_size: int,
    lr: float,
    calibrate_seed: int,
    calibrate_options: dict,
    eval_split: str,
    eval_limit: int,
    eval_options: dict,
    attack_students: list,
    attack_suite: list,
    attack_seeds: int,
    attack_steps: int,
    attack_samples: int,
    attack_max_new_tokens: int,
    attack_batch_size: int,
    attack_lr: float,
    attack_limit: int,
    attack_options: dict,
    min_retention: float,
    max_transfer: float,
    gate_aggregate: str,
    min_seeds: int,
    publish: bool,
    store_root: str, s3_secret: str, env_config_map: str, image: str, gpu_image: str, accelerator_type: str,
    accelerator_count: int, num_nodes: int, trainer_runtime: str, gpu_node_selector: dict, gpu_tolerations: list, light_cpu_request: str,
    light_cpu_limit: str, light_memory_request: str, light_memory_limit: str, gpu_cpu_request: str,
    gpu_cpu_limit: str, gpu_memory_request: str, gpu_memory_limit: str,
):
    at = Place(locals())
    # One release at a time: each one already fans out over the attack suite.
    with dsl.ParallelFor(releases, parallelism=1) as rel:
        harden(teacher=rel.ref, proxies=proxies, release=rel.ref, teacher_sft_steps=0, teacher_sft_options={},
               task=task, source=source, data_seed=data_seed, prep_options=prep_options, eta=eta, beta=beta,
               calibrate_steps=calibrate_steps, group_size=group_size, lr=lr,
               calibrate_seed=calibrate_seed, calibrate_options=calibrate_options, eval_split=eval_split,
               eval_limit=eval_limit, eval_options=eval_options, attack_students=attack_students,
               attack_suite=attack_suite, attack_seeds=attack_seeds, attack_steps=attack_steps,
               attack_samples=attack_samples, attack_max_new_tokens=attack_max_new_tokens,
               attack_batch_size=attack_batch_size, attack_lr=attack_lr, attack_limit=attack_limit,
               attack_options=attack_options, min_retention=min_retention,
               max_transfer=max_transfer, min_transfer=stage_default("gate", "min_transfer"),
               gate_aggregate=gate_aggregate, min_seeds=min_seeds, publish_model=publish, publish_to="",
               releases_prefix=releases_prefix, hardened_prefix=hardened_prefix, **at.args)


@dsl.pipeline(
    name="dguard-reharden",
    description="Harden every new model release (undistillable calibration + attack suite + gate) and publish twins.",
)
@parameters
def reharden_pipeline(
    releases_prefix: str,
    hardened_prefix: str,
    retry_rejected: bool,
    proxies: list,
    task: str,
    source: str,
    data_seed: int,
    prep_options: dict,
    eta: float,
    beta: float,
    calibrate_steps: int,
    group_size: int,
    lr: float,
    calibrate_seed: int,
    calibrate_options: dict,
    eval_split: str,
    eval_limit: int,
    eval_options: dict,
    attack_students: list,
    attack_suite: list,
    attack_seeds: int,
    attack_steps: int,
    attack_samples: int,
    attack_max_new_tokens: int,
    attack_batch_size: int,
    attack_lr: float,
    attack_limit: int,
    attack_options: dict,
    min_retention: float,
    max_transfer: float,
    gate_aggregate: str,
    min_seeds: int,
    publish: bool,
    store_root: str, s3_secret: str, env_config_map: str, image: str, gpu_image: str, accelerator_type: str,
    accelerator_count: int, num_nodes: int, trainer_runtime: str, gpu_node_selector: dict, gpu_tolerations: list, light_cpu_request: str,
    light_cpu_limit: str, light_memory_request: str, light_memory_limit: str, gpu_cpu_request: str,
    gpu_cpu_limit: str, gpu_memory_request: str, gpu_memory_limit: str,
):
    at = Place(locals())
    pending = at.light(list_releases(releases_prefix=releases_prefix, hardened_prefix=hardened_prefix,
                                     retry_rejected=retry_rejected, store_root=store_root), False)
    pinned = at.light(pin_models(teacher="", proxies=proxies, student="", store_root=store_root), False)
    # The loop lives in a sub-pipeline that receives the list as an input: that orders it after the listing
    # everywhere (kfp.local does not order a ParallelFor after the task that produced its items).
    harden_each(releases=pending.outputs["Output"], proxies=pinned.outputs["proxies"],
                releases_prefix=releases_prefix, hardened_prefix=hardened_prefix, task=task, source=source,
                data_seed=data_seed, prep_options=prep_options, eta=eta, beta=beta, calibrate_steps=calibrate_steps,
                group_size=group_size, lr=lr, calibrate_seed=calibrate_seed, calibrate_options=calibrate_options,
                eval_split=eval_split, eval_limit=eval_limit, eval_options=eval_options,
                attack_students=attack_students, attack_suite=attack_suite, attack_seeds=attack_seeds,
                attack_steps=attack_steps, attack_samples=attack_samples,
                attack_max_new_tokens=attack_max_new_tokens, attack_batch_size=attack_batch_size,
                attack_lr=attack_lr, attack_limit=attack_limit, attack_options=attack_options,
                min_retention=min_retention, max_transfer=max_transfer, gate_aggregate=gate_aggregate,
                min_seeds=min_seeds, publish=publish, **at.args)
# fmt: on

PIPELINE = reharden_pipeline
