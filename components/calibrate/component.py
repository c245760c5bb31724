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
    calibration artifact (adapter + calibration card).
    """
    import os
    from collections import namedtuple

    from components._common import log_metrics, run_stage, setup, unpin, write_ref, write_text
    from dg_core import store

    setup(store_root)
    params = {
        "teacher": unpin(teacher),
        "proxies": [unpin(p) for p in proxies],
        "dataset": unpin(dataset),
        "eta": eta,
        "beta": beta,
        "max_steps": max_steps,
        "group_size": group_size,
        "lr": lr,
        "seed": seed,
    }
    summary = run_stage("calibrate", params, options)
    model_ref = write_ref(model, summary["model"], eta=eta, beta=beta)
    calibration = summary.get("uri") or summary["model"]
    d = store.fetch(calibration)
    for name in ("card.md", "calibration_card.md"):
        if os.path.isfile(os.path.join(d, name)):
            write_text(card, open(os.path.join(d, name)).read())
            break
    else:
        write_text(card, f"eta={eta} beta={beta}\n")
    log_metrics(metrics, {k: v for k, v in summary.items() if k not in ("model", "uri")})
    out = namedtuple("Calibrated", ["model_ref", "calibration"])
    from components._common import PIN, content_sha

    return out(model_ref, f"{calibration}{PIN}{content_sha(calibration)}")
