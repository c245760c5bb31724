# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    teacher_original: dict,
    teacher_calibrated: dict,
    students_original: list[dict],
    students_calibrated: list[dict],
    title: str,
    options: dict,
    store_root: str,
    html: Output[HTML],
    table: Output[Markdown],
    metrics: Output[Metrics],
) -> str:
    """Trade-off report: teacher retention and student transfer per attack, as HTML with plots and a table.

    Renders in the Kubeflow UI (HTML, Markdown, Metrics) and is published to the store; returns its URI.
    """
    import os

    from components._common import log_metrics, output_uri, run_stage, setup, write_text
    from dg_core import store

    setup(store_root)
    evaluations = [teacher_original, teacher_calibrated, *students_original, *students_calibrated]
    params = {"evaluations": evaluations, "title": title}
    params["output"] = output_uri(store_root, "report", params)
    summary = run_stage("report", params, options)
    d = store.fetch(summary["uri"])
    write_text(html, open(os.path.join(d, "report.html")).read())
    md = os.path.join(d, "report.md")
    write_text(table, open(md).read() if os.path.isfile(md) else summary.get("table", ""))
    log_metrics(metrics, {k: v for k, v in summary.items() if k != "uri"})
    print(f"report: {store.join(summary['uri'], 'report.html')}")
    return summary["uri"]
