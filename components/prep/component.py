# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from kfp import dsl
from kfp.dsl import Dataset, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prep(task: str, source: str, seed: int, options: dict, store_root: str, dataset: Output[Dataset]) -> str:
    """Load, validate, deduplicate and split a task dataset, and publish it to the store.

    `source` is "synthetic" (the task's offline generator), a JSONL/Parquet/Arrow file or artifact as a path,
    file:// or s3:// URI, or a hub dataset id. `task` names the scorer (default: the source's). The same inputs
    give a byte-identical artifact, published under a URI derived from the inputs. `options` takes any further
    field of `dguard prep` (n, splits, task_options...). Not cached: a source file may change under the same
    URI; the returned reference pins the content, so everything downstream caches exactly when data is equal.
    """
    from components._common import output_uri, run_stage, setup, write_ref

    setup(store_root)
    params = {"source": source or "synthetic", "seed": seed}
    if task:
        params["task"] = task
    params["output"] = output_uri(store_root, "datasets", {**params, **options})
    summary = run_stage("prep", params, options)
    print(f"dataset: {summary['uri']} ({summary['splits']})")
    return write_ref(dataset, summary["uri"], task=summary["task"], splits=summary["splits"])
