# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def diagnose(
    teacher: str,
    student: str,
    dataset: str,
    limit: int,
    options: dict,
    store_root: str,
    result: Output[Artifact],
    html: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
) -> str:
    """Measure the distillation traps of a teacher/student pair: tail noise, off-policy instability, the
    teacher-student gap, wrong-trace preference; plus the student's symptoms. Writes JSON + HTML reports.
    """
    from components._common import log_metrics, run_stage, setup, unpin, write_ref, write_text
    from dg_core import store

    setup(store_root)
    params = {"teacher": unpin(teacher), "student": unpin(student), "dataset": unpin(dataset), "n_examples": limit}
    out = run_stage("diagnose", params, options)
    d = store.fetch(out["report"])
    write_text(html, (d / out["report_html"].rsplit("/", 1)[-1]).read_text())
    lines = [f"**{out['distillability']}**", "", str(out["summary"])]
    lines += [f"- {f}" for f in out.get("flags") or []]
    write_text(summary, "\n".join(lines) + "\n")
    log_metrics(metrics, {"teacher_accuracy": out["teacher_accuracy"], "student_accuracy": out["student_accuracy"]})
    print(f"diagnosis: {out['report_html']}")
    return write_ref(result, out["report"], distillability=out["distillability"])
