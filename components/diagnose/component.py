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
    import os

    from components._common import log_metrics, run_stage, setup, unpin, write_ref, write_text
    from dg_core import store

    setup(store_root)
    params = {"teacher": unpin(teacher), "student": unpin(student), "dataset": unpin(dataset), "limit": limit}
    out = run_stage("diagnose", params, options)
    d = store.fetch(out["uri"])
    for name in os.listdir(d):
        if name.endswith(".html"):
            write_text(html, open(os.path.join(d, name)).read())
            break
    write_text(summary, str(out.get("summary", out.get("headline", ""))) + "\n")
    log_metrics(metrics, {k: v for k, v in out.items() if k != "uri"})
    return write_ref(result, out["uri"])
