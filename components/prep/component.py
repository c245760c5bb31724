# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from kfp import dsl
from kfp.dsl import Dataset, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prep(task: str, source: str, seed: int, options: dict, store_root: str, dataset: Output[Dataset]) -> str:
    """Load, validate, deduplicate and split a task dataset, and publish it to the store.

    `source` is a hub id, a file or s3:// URI, or empty for the task's offline synthetic generator. The same
    inputs give a byte-identical artifact. `options` takes any further field of `dguard prep`. Returns the
    pinned dataset reference.
    """
    from components._common import pin, run_stage, setup, unpin, write_ref

    setup(store_root)
    params = {"task": task, "seed": seed}
    if source:
        params["source"] = unpin(pin(source)) if source.startswith(("s3://", "file://", "/")) else source
    summary = run_stage("prep", params, options)
    print(f"dataset: {summary['uri']}")
    return write_ref(dataset, summary["uri"], task=task)
