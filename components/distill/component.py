# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill(
    teacher: str,
    student: str,
    dataset: str,
    method: str,
    seed: int,
    reinit: bool,
    steps: int,
    n_samples: int,
    max_new_tokens: int,
    batch_size: int,
    lr: float,
    limit: int,
    options: dict,
    store_root: str,
    model: Output[Model],
    metrics: Output[Metrics],
    num_processes: int = 1,
    launch_strategy: str = "ddp",
    num_nodes: int = 1,
    trainer_runtime: str = "torch-distributed",
    trainer_image: str = "",
) -> str:
    """Distill a probe student from a teacher (the attack): sft, kd, gkd or xtok, for `steps` optimizer steps.

    `reinit` re-initialises the student's weights from `seed` (independent random-init probe students). Teacher
    samples are generated once per teacher and shared by every student. `options` takes any further
    field of `dguard distill` (e.g. {"kind": "reverse", "lora": true}). Returns the pinned student reference.

    `num_processes` > 1 runs the stage in that many processes (one per GPU of the task) under `accelerate launch`
    with the packaged `launch_strategy` config (ddp, fsdp or zero3); the pipelines pass `accelerator_count`.
    `num_nodes` > 1 runs the stage as a Kubeflow Trainer TrainJob instead (`trainer_runtime`, default
    torch-distributed; `num_processes` GPUs per node; `trainer_image`, default the runtime's): this task creates
    it, streams its logs, waits, and reads rank 0's outputs back from the store.
    """
    from components._common import log_metrics, placement, run_stage, setup, unpin, write_ref

    setup(store_root)
    params = {
        "teacher": unpin(teacher),
        "student": unpin(student),
        "dataset": unpin(dataset),
        "method": method,
        "seed": seed,
        "reinit": reinit,
        "steps": steps,
        "n_samples": n_samples,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "lr": lr,
        "limit": limit,
    }
    result = run_stage(
        "distill",
        params,
        options,
        **placement(num_processes, launch_strategy, num_nodes, trainer_runtime, trainer_image),
    )
    log_metrics(metrics, {k: v for k, v in result.items() if k != "model"})
    return write_ref(model, result["model"], method=method, seed=seed, teacher=teacher, reused=result.get("reused"))
