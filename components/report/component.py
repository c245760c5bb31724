# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    teacher_original: dict,
    teacher_calibrated: dict,
    students_original: list[dict],
    students_calibrated: list[dict],
    floors: list[dict],
    attack_steps: int,
    eta: float,
    decision: Input[Artifact],
    store_root: str,
    html: Output[HTML],
    table: Output[Markdown],
    metrics: Output[Metrics],
) -> str:
    """Trade-off report: teacher retention and student transfer per attack (students x methods, mean over
    seeds, next to each student's undistilled floor), as an HTML page with plots and a Markdown table.

    The attack loop's evaluation records are gathered into one `attack` artifact (the layout `dguard attack`
    writes), then rendered by `dguard report`; both are published to the store. The worst case follows the
    direction of eta (dg_core.knob). `decision` is the release gate's decision: its verdict and reasons head the
    page. Returns the report URI.
    """
    import json
    import tempfile
    from pathlib import Path

    from components._common import log_metrics, output_uri, read_ref, run_stage, setup, unpin, uri_of, write_text
    from dg_core import store
    from dg_core.distill.suite import ATTACK_FILE, attack_markdown
    from dg_core.gate import attack_summary
    from dg_core.knob import direction_of

    setup(store_root)
    evaluations = [teacher_original, teacher_calibrated, *students_original, *students_calibrated]
    summary = attack_summary(
        evaluations,
        floors,
        steps=attack_steps,
        teacher=uri_of(teacher_original.get("model_ref", "")),
        calibrated=uri_of(teacher_calibrated.get("model_ref", "")),
    )
    attack_uri = output_uri(store_root, "attacks", {"evaluations": evaluations, "floors": floors})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ATTACK_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
        (Path(tmp) / "attack.md").write_text(attack_markdown(summary))
        store.publish(tmp, attack_uri, metadata={"kind": "attack", "calibrated": summary["config"]["calibrated"]})
    evals = [r["eval"] for r in (teacher_original, teacher_calibrated) if r.get("eval")]
    gate_uri = unpin(read_ref(decision))
    out = run_stage(
        "report", {"attacks": [attack_uri], "evals": evals, "direction": direction_of(eta), "gate": gate_uri}
    )
    d = store.fetch(out["report"])
    write_text(html, (d / "report.html").read_text())
    write_text(table, (d / "report.md").read_text())
    row = (out.get("tradeoff") or [{}])[0]
    log_metrics(metrics, {k: row.get(k) for k in ("retention", "worst_transfer", "max_transfer", "mean_transfer")})
    print(f"report: {store.join(out['report'], 'report.html')}")
    return out["report"]
