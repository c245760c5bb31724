# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Model, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def calibrate(
    teacher: str,
    proxies: list,
    dataset: str,
    eta: float,
    beta: float,
    steps: int,
    group_size: int,
    lr: float,
    seed: int,
    options: dict,
    store_root: str,
    model: Output[Model],
    card: Output[Markdown],
    metrics: Output[Metrics],
    num_processes: int = 1,
    launch_strategy: str = "ddp",
    num_nodes: int = 1,
    trainer_runtime: str = "torch-distributed",
    trainer_image: str = "",
) -> NamedTuple("Calibrated", [("Output", str), ("calibration", str)]):
    """RFT calibration of the teacher: the distillability knob.

    eta < 0 makes students distilled from the teacher collapse (undistillable), eta > 0 helps them (distillable),
    eta = 0 is plain RFT. beta anchors the teacher to itself (KL). `options` takes any further field of
    `dguard calibrate` (guards, LoRA rank, reward normalisation...).

    Outputs: `Output`, the pinned calibrated model, or "" when calibration refused the teacher (its pre-flight
    soundness check or its retention check; the pipeline then records why instead of attacking it), and
    `calibration`, the pinned calibration card. Other bad input fails the task with one line.

    `num_processes` > 1 runs the stage in that many processes (one per GPU of the task) under `accelerate launch`
    with the packaged `launch_strategy` config (ddp, fsdp or zero3); the pipelines pass `accelerator_count`.
    `num_nodes` > 1 runs the stage as a Kubeflow Trainer TrainJob instead (`trainer_runtime`, default
    torch-distributed; `num_processes` GPUs per node; `trainer_image`, default the runtime's): this task creates
    it, streams its logs, waits, and reads rank 0's outputs back from the store.
    """
    import json
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from components._common import (
        PIN,
        content_sha,
        log_metrics,
        output_uri,
        placement,
        run_stage,
        setup,
        unpin,
        write_ref,
        write_text,
    )
    from dg_core import store
    from dg_core.errors import DGError

    setup(store_root)
    out = namedtuple("Calibrated", ["Output", "calibration"])
    params = {
        "teacher": unpin(teacher),
        "proxies": [unpin(p) for p in proxies],
        "dataset": unpin(dataset),
        "eta": eta,
        "beta": beta,
        "steps": steps,
        "group_size": group_size,
        "lr": lr,
        "seed": seed,
        "progress": False,
    }
    try:
        summary = run_stage(
            "calibrate",
            params,
            options,
            **placement(num_processes, launch_strategy, num_nodes, trainer_runtime, trainer_image),
        )
    except DGError as e:
        if not str(e).startswith("pre-flight"):
            raise
        # The teacher is not sound on the task: a decision about this teacher, not a broken run.
        card_uri = output_uri(store_root, "calibrate-refused", {**params, **options})
        with tempfile.TemporaryDirectory() as tmp:
            body = {"status": "refused", "reason": str(e), "teacher": params["teacher"], "eta": eta}
            (Path(tmp) / "card.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
            (Path(tmp) / "card.md").write_text(f"# Calibration refused\n\n{e}\n")
            store.publish(tmp, card_uri, metadata={"kind": "calibration-card", "status": "refused"})
        write_text(card, f"# Calibration refused\n\n{e}\n")
        write_text(model, json.dumps({"refused": str(e)}))
        print(f"calibration refused: {e}")
        return out("", f"{card_uri}{PIN}{content_sha(card_uri)}")
    card_dir = store.fetch(summary["card"])
    write_text(card, (card_dir / "card.md").read_text() if (card_dir / "card.md").is_file() else "")
    log_metrics(
        metrics,
        {
            "retention": summary.get("retention"),
            "steps": summary.get("steps"),
            "before": summary.get("before", {}),
            "after": summary.get("after", {}),
        },
    )
    calibration = f"{summary['card']}{PIN}{content_sha(summary['card'])}"
    if summary.get("status") != "passed" or not summary.get("model"):
        write_text(model, json.dumps({"rejected": summary.get("reason")}))
        print(f"calibration {summary.get('status')}: {summary.get('reason')} (card: {summary['card']})")
        return out("", calibration)
    return out(write_ref(model, summary["model"], eta=eta, beta=beta, card=summary["card"]), calibration)
