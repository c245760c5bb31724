# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.

from kfp import dsl
from kfp.dsl import Markdown, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def list_releases(
    releases_prefix: str, hardened_prefix: str, retry_rejected: bool, store_root: str, summary: Output[Markdown]
) -> list[dict]:
    """Model releases under `releases_prefix` that have no up-to-date hardened twin under `hardened_prefix`.

    Never cached: it looks at the store as it is now. Each item is {name, release, ref (pinned), hardened}.
    A release whose current content the gate rejected before is skipped unless `retry_rejected`. With nothing
    new it returns an empty list and says so, and the re-hardening run does nothing else.
    """
    from components._common import PIN, setup, write_text
    from dg_core.publish import list_releases, pending_releases

    setup(store_root)
    pending = pending_releases(releases_prefix, hardened_prefix, retry_rejected=retry_rejected)
    total = len(list_releases(releases_prefix, hardened_prefix))
    items = [{**p, "ref": f"{p['release']}{PIN}{p['sha256']}"} for p in pending]
    if items:
        lines = [f"{len(items)} of {total} release(s) under {releases_prefix} need hardening:"]
        lines += [f"- {p['name']} -> {p['hardened']}" for p in items]
    else:
        lines = [f"Nothing new to harden: all {total} release(s) under {releases_prefix} have up-to-date twins."]
    print("\n".join(lines))
    write_text(summary, "\n".join(lines) + "\n")
    return items
