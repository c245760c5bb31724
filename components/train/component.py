# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    model: str,
    dataset: str,
    steps: int,
    batch_size: int,
    lr: float,
    options: dict,
    store_root: str,
    trained: Output[Model],
    metrics: Output[Metrics],
    num_processes: int = 1,
    launch_strategy: str = "ddp",
) -> str:
    """Supervised fine-tuning of a model on the dataset's references, to bootstrap a sound teacher.

    With steps = 0 (the default for real releases) the model passes through untouched and nothing runs; the
    local demo uses it to teach the offline zoo teacher the task before calibrating it. `options` takes any
    further field of `dguard train`. Returns the pinned reference of the model to use.

    `num_processes` > 1 runs the stage in that many processes (one per GPU of the task) under `accelerate launch`
    with the packaged `launch_strategy` config (ddp, fsdp or zero3); the pipelines pass `accelerator_count`.
    """
    from components._common import log_metrics, pin, run_stage, setup, unpin, write_ref

    setup(store_root)
    if steps <= 0:
        ref = pin(model)
        write_ref(trained, unpin(ref), bootstrapped=False)
        return ref
    params = {"model": unpin(model), "dataset": unpin(dataset), "steps": steps, "batch_size": batch_size, "lr": lr}
    summary = run_stage("train", params, options, num_processes=num_processes, strategy=launch_strategy)
    log_metrics(metrics, {k: v for k, v in summary.items() if k != "model"})
    return write_ref(trained, summary["model"], bootstrapped=True, steps=steps)
