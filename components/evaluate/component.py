# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: str,
    dataset: str,
    split: str,
    limit: int,
    role: str,
    teacher: str,
    student: str,
    method: str,
    seed: int,
    options: dict,
    store_root: str,
    result: Output[Artifact],
    metrics: Output[Metrics],
) -> dict:
    """Accuracy of a model on a prepared dataset split (greedy, with a bootstrap CI), as an evaluation record.

    `role` is "teacher" or "student"; `teacher` says which teacher ("original" or "calibrated") the model is or
    was distilled from; `student`, `method`, `seed` name the attack. The returned record is what the report
    and the gate consume. `options` takes any further field of `dguard evaluate`.
    """
    from components._common import log_metrics, run_stage, setup, unpin, write_ref

    setup(store_root)
    label = {"model": role, "teacher": teacher}
    if role == "student":
        label.update({"student": student, "method": method, "seed": seed})
    params = {"model": unpin(model), "dataset": unpin(dataset), "split": split, "limit": limit, "label": label}
    summary = run_stage("evaluate", params, options)
    record = {**summary["record"], "eval": summary["eval"], "model_ref": model}
    write_ref(result, summary["eval"], **label, accuracy=record["accuracy"])
    log_metrics(metrics, {k: v for k, v in summary.items() if k not in ("record", "eval")})
    what = f"{role} ({teacher}" + (f", {student}/{method}/seed {seed})" if role == "student" else ")")
    print(f"{what}: accuracy {record['accuracy']:.3f} on {record['n']} examples")
    return record
