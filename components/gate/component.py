# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.

from kfp import dsl
from kfp.dsl import Artifact, Markdown, Metrics, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    teacher_original: dict,
    teacher_calibrated: dict,
    students_original: list[dict],
    students_calibrated: list[dict],
    model: str,
    eta: float,
    min_retention: float,
    max_transfer: float,
    min_transfer: float,
    aggregate: str,
    min_seeds: int,
    store_root: str,
    decision: Output[Artifact],
    summary: Output[Markdown],
    metrics: Output[Metrics],
) -> bool:
    """Release gate: teacher retention >= min_retention, and student transfer <= max_transfer (undistillable)
    or >= min_transfer (distillable). Returns whether it passed; the reasons are in `summary`.

    The direction follows eta by the one rule of dg_core.knob: < 0 undistillable, > 0 distillable, 0 the control
    (retention gated, transfer reported). The decision is published to
    the store bound to the calibrated model's sha256, so publish can verify it judged exactly that model.
    """
    from components._common import log_metrics, output_uri, run_stage, setup, uri_of, write_ref, write_text
    from dg_core.gate import to_markdown
    from dg_core.knob import direction_of

    setup(store_root)
    direction = direction_of(eta)
    evaluations = [teacher_original, teacher_calibrated, *students_original, *students_calibrated]
    params = {
        "evaluations": evaluations,
        "direction": direction,
        "min_retention": min_retention,
        "max_transfer": max_transfer,
        "min_transfer": min_transfer,
        "aggregate": aggregate,
        "min_seeds": min_seeds,
        "model": uri_of(model),
    }
    params["output"] = output_uri(store_root, "gate", {**params, "model": model})
    result = run_stage("gate", params)
    write_ref(decision, result["uri"], passed=result["passed"], direction=direction)
    write_text(summary, to_markdown(result))
    log_metrics(
        metrics,
        {"gate_passed": float(result["passed"]), "retention": result["retention"], "transfer": result["transfer"]},
    )
    print(to_markdown(result))
    return bool(result["passed"])
