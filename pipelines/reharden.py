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
from pipelines._k8s import cached, with_store
from pipelines.calibrate import INFRA, harden


# fmt: off
@dsl.pipeline(name="dguard-harden-each", description="The harden sub-graph for each pending release.")
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
    max_steps: int,
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
    store_root: str,
    s3_secret: str,
    env_config_map: str,
    image: str,
    accelerator_type: str,
    gpu_image: str,
    accelerator_count: int,
    gpu_node_selector: dict,
    gpu_tolerations: list,
):
    # One release at a time: each one already fans out over the attack suite.
    with dsl.ParallelFor(releases, parallelism=1) as rel:
        harden(teacher=rel.ref, proxies=proxies, release=rel.ref, teacher_sft_steps=0, teacher_sft_options={},
               task=task, source=source, data_seed=data_seed,
               prep_options=prep_options, eta=eta, beta=beta, max_steps=max_steps, group_size=group_size, lr=lr,
               calibrate_seed=calibrate_seed, calibrate_options=calibrate_options, eval_split=eval_split,
               eval_limit=eval_limit, eval_options=eval_options, attack_students=attack_students,
               attack_suite=attack_suite, attack_seeds=attack_seeds, attack_steps=attack_steps,
               attack_samples=attack_samples, attack_max_new_tokens=attack_max_new_tokens,
               attack_batch_size=attack_batch_size, attack_lr=attack_lr, attack_limit=attack_limit,
               attack_options=attack_options, direction="undistillable", min_retention=min_retention,
               max_transfer=max_transfer, min_transfer=1.1, gate_aggregate=gate_aggregate, min_seeds=min_seeds,
               publish_model=publish, publish_to="", releases_prefix=releases_prefix,
               hardened_prefix=hardened_prefix,
               store_root=store_root, s3_secret=s3_secret, env_config_map=env_config_map, image=image,
               accelerator_type=accelerator_type, gpu_image=gpu_image, accelerator_count=accelerator_count,
               gpu_node_selector=gpu_node_selector, gpu_tolerations=gpu_tolerations)


@dsl.pipeline(
    name="dguard-reharden",
    description="Harden every new model release (undistillable calibration + attack suite + gate) and publish twins.",
)
def reharden_pipeline(
    releases_prefix: str = "s3://models/releases",
    hardened_prefix: str = "s3://models/hardened",
    retry_rejected: bool = False,
    proxies: list = ["zoo:proxy"],  # noqa: B006 - KFP takes literal defaults
    task: str = "synthetic_math",
    source: str = "synthetic",
    data_seed: int = 0,
    prep_options: dict = {},  # noqa: B006
    eta: float = -1.0,
    beta: float = 0.05,
    max_steps: int = 30,
    group_size: int = 8,
    lr: float = 5e-4,
    calibrate_seed: int = 0,
    calibrate_options: dict = {},  # noqa: B006
    eval_split: str = "test",
    eval_limit: int = 64,
    eval_options: dict = {},  # noqa: B006
    attack_students: list = ["zoo:student-llama", "zoo:student-gpt2"],  # noqa: B006
    attack_suite: list = ["sft"],  # noqa: B006
    attack_seeds: int = 1,
    attack_steps: int = 300,
    attack_samples: int = 2,
    attack_max_new_tokens: int = 64,
    attack_batch_size: int = 32,
    attack_lr: float = 2e-3,
    attack_limit: int = 0,
    attack_options: dict = {},  # noqa: B006
    min_retention: float = 0.95,
    max_transfer: float = 0.5,
    gate_aggregate: str = "worst",
    min_seeds: int = 1,
    publish: bool = True,
    store_root: str = INFRA["store_root"],
    s3_secret: str = INFRA["s3_secret"],
    env_config_map: str = INFRA["env_config_map"],
    image: str = INFRA["image"],
    accelerator_type: str = INFRA["accelerator_type"],
    gpu_image: str = INFRA["gpu_image"],
    accelerator_count: int = INFRA["accelerator_count"],
    gpu_node_selector: dict = {},  # noqa: B006
    gpu_tolerations: list = [],  # noqa: B006
):
    pending = cached(with_store(list_releases(releases_prefix=releases_prefix, hardened_prefix=hardened_prefix,
                                              retry_rejected=retry_rejected,
                                              store_root=store_root), s3_secret, env_config_map, image), False)
    pinned = cached(with_store(pin_models(teacher="", proxies=proxies, student="", store_root=store_root),
                               s3_secret, env_config_map, image), False)
    # The loop lives in a sub-pipeline that receives the list as an input: that orders it after the listing
    # everywhere (kfp.local does not order a ParallelFor after the task that produced its items).
    harden_each(releases=pending.outputs["Output"], proxies=pinned.outputs["proxies"],
                releases_prefix=releases_prefix, hardened_prefix=hardened_prefix, task=task, source=source,
                data_seed=data_seed, prep_options=prep_options, eta=eta, beta=beta, max_steps=max_steps,
                group_size=group_size, lr=lr, calibrate_seed=calibrate_seed, calibrate_options=calibrate_options,
                eval_split=eval_split, eval_limit=eval_limit, eval_options=eval_options,
                attack_students=attack_students, attack_suite=attack_suite, attack_seeds=attack_seeds,
                attack_steps=attack_steps, attack_samples=attack_samples,
                attack_max_new_tokens=attack_max_new_tokens, attack_batch_size=attack_batch_size,
                attack_lr=attack_lr, attack_limit=attack_limit, attack_options=attack_options,
                min_retention=min_retention, max_transfer=max_transfer, gate_aggregate=gate_aggregate,
                min_seeds=min_seeds, publish=publish, store_root=store_root, s3_secret=s3_secret,
                env_config_map=env_config_map, image=image, accelerator_type=accelerator_type, gpu_image=gpu_image,
                accelerator_count=accelerator_count, gpu_node_selector=gpu_node_selector,
                gpu_tolerations=gpu_tolerations)
# fmt: on

PIPELINE = reharden_pipeline
