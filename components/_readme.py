"""Regenerate ``components/<name>/README.md`` from the component specs: ``python -m components._readme``.

A test checks every README names every input and output of its component.
"""

import importlib
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
USED_IN = {
    "pin": "calibrate, reharden, diagnose (first task; never cached)",
    "plan": "calibrate, reharden (inside the `harden` sub-graph; never cached)",
    "releases": "reharden (first task; never cached)",
    "prep": "calibrate, reharden, diagnose",
    "diagnose": "diagnose",
    "calibrate": "calibrate, reharden (GPU)",
    "distill": "calibrate, reharden: the attack loop, once from the original and once from the calibrated teacher (GPU)",
    "evaluate": "calibrate, reharden: both teachers (`evaluate-teacher`) and every attacked student (GPU)",
    "report": "calibrate, reharden (after the attack loop)",
    "gate": "calibrate, reharden (after the attack loop)",
    "train": "calibrate (bootstrap SFT of the teacher before calibration; a pass-through with 0 steps) (GPU)",
    "publish": "calibrate, reharden: `publish` only when the gate passed and `publish` is true, `reject` when it failed, `reject-calibration` when calibration refused the teacher (never cached)",
}


def main() -> None:
    for d in sorted(ROOT.iterdir()):
        if not (d / "component.py").is_file():
            continue
        mod = importlib.import_module(f"components.{d.name}.component")
        lines: list[str] = []
        for c in [v for v in vars(mod).values() if hasattr(v, "component_spec")]:
            spec = c.component_spec
            lines += (
                ["" if lines else "", f"# `{spec.name}` component", ""] if lines else [f"# `{spec.name}` component", ""]
            )
            lines += [spec.description.strip(), ""]
            lines += [
                f"Defined in `components/{d.name}/component.py` (`from components.{d.name}.component import {c.python_func.__name__}`).",
                f"Used by: {USED_IN[d.name]}.",
                "",
                "Image: the CPU image `ghcr.io/distillation-guards/dguard:<version>` (`components._common.IMAGE`); the",
                "pipelines place GPU tasks with `accelerator_type`/`accelerator_count` and the GPU node selector and",
                "tolerations parameters. Models and datasets are passed as pinned store references",
                "(`<uri>#sha256=<content sha>`, see `components/_common.py`).",
                "",
                "## Inputs",
                "",
                "| name | type | default |",
                "|---|---|---|",
            ]
            for n, i in (spec.inputs or {}).items():
                default = "-" if i.default is None and not i.optional else repr(i.default)
                lines.append(f"| `{n}` | {i.type} | {default} |")
            lines += ["", "## Outputs", "", "| name | type |", "|---|---|"]
            for n, o in (spec.outputs or {}).items():
                lines.append(f"| `{n}` | {o.type} |")
        (d / "README.md").write_text("\n".join(lines) + "\n")
        print(d / "README.md")


if __name__ == "__main__":
    main()
