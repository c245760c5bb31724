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
    max_steps: int,
    group_size: int,
    lr: float,
    seed: int,
    options: dict,
    store_root: str,
    model: Output[Model],
    card: Output[Markdown],
    metrics: Output[Metrics],
) -> NamedTuple("Calibrated", [("model_ref", str), ("calibration", str)]):
    """RFT calibration of the teacher: the distillability knob.

    eta < 0 makes students distilled from the teacher collapse (undistillable), eta > 0 helps them (distillable),
    eta = 0 is plain RFT. beta anchors the teacher to itself (KL). `options` takes any further field of
    `dguard calibrate` (guards, LoRA rank, reward normalisation...). Returns the pinned calibrated model and the
    pinned calibration card. Fails, naming the reason and the card, when the pre-flight check or the stage's own
    retention gate rejects the calibration: nothing downstream may use such a teacher.
    """
    from collections import namedtuple

    from components._common import PIN, content_sha, log_metrics, run_stage, setup, unpin, write_ref, write_text
    from dg_core import store
    from dg_core.errors import DGError

    setup(store_root)
    params = {
        "teacher": unpin(teacher),
        "proxies": [unpin(p) for p in proxies],
        "dataset": unpin(dataset),
        "eta": eta,
        "beta": beta,
        "steps": max_steps,
        "group_size": group_size,
        "lr": lr,
        "seed": seed,
        "progress": False,
    }
    summary = run_stage("calibrate", params, options)
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
    if summary.get("status") != "passed" or not summary.get("model"):
        raise DGError(f"calibration failed its retention gate: {summary.get('reason')} (card: {summary['card']})")
    model_ref = write_ref(model, summary["model"], eta=eta, beta=beta, card=summary["card"])
    out = namedtuple("Calibrated", ["model_ref", "calibration"])
    return out(model_ref, f"{summary['card']}{PIN}{content_sha(summary['card'])}")
