# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish(
    model: str,
    decision: Input[Artifact],
    calibration: str,
    release: str,
    releases_prefix: str,
    hardened_prefix: str,
    dest: str,
    store_root: str,
    hardened: Output[Model],
    card: Output[Markdown],
) -> str:
    """Publish the calibrated model with its calibration card as the hardened twin of `release`.

    Runs only when the gate passed, and re-checks that itself: the gate decision must have passed and name
    exactly this model's sha256. Destination: `dest`, else the release's twin under `hardened_prefix`, else
    `<store_root>/hardened/<release path>`. Idempotent: an identical twin is left as it is.
    """
    import os

    from components._common import read_ref, run_stage, setup, unpin, write_ref, write_text
    from dg_core import store

    setup(store_root)
    release_uri = unpin(release)
    if not dest and not (releases_prefix and hardened_prefix):
        root = store.default_root()
        releases_prefix, hardened_prefix = root, store.join(root, "hardened")
        if not release_uri.startswith(root.rstrip("/") + "/"):
            dest = store.join(hardened_prefix, release_uri.rstrip("/").rsplit("/", 1)[-1])
    params = {
        "model": unpin(model),
        "gate": unpin(read_ref(decision)),
        "card": unpin(calibration),
        "release": release_uri,
        "releases_prefix": releases_prefix,
        "hardened_prefix": hardened_prefix,
        "dest": dest,
    }
    result = run_stage("publish", params)
    write_ref(hardened, result["uri"], release=release_uri, published=result["published"])
    card_path = os.path.join(store.fetch(result["uri"]), "calibration_card.md")
    write_text(card, open(card_path).read())
    print(f"hardened model: {result['uri']}" + ("" if result["published"] else " (already published)"))
    return result["uri"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def reject(decision: Input[Artifact], release: str, releases_prefix: str, hardened_prefix: str, store_root: str) -> str:
    """The release gate failed: record it for the release (re-hardening only), so the recurring run does not
    calibrate the same weights again with the same outcome; new release content, or `retry_rejected=true`, tries
    again. In the calibrate pipeline (no releases prefix) it only says that nothing was published.
    """
    from components._common import read_ref, setup, unpin
    from dg_core.publish import gate_reasons, record_rejection

    setup(store_root)
    gate_uri = unpin(read_ref(decision))
    reasons = gate_reasons(gate_uri)
    if not releases_prefix:
        print(f"gate failed, nothing published: {'; '.join(reasons)}")
        return ""
    uri = record_rejection(unpin(release), releases_prefix, hardened_prefix, reasons, gate_uri)
    print(f"gate failed for {unpin(release)}, recorded at {uri}: {'; '.join(reasons)}")
    return uri


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def reject_calibration(
    calibration: str, release: str, releases_prefix: str, hardened_prefix: str, store_root: str
) -> str:
    """Calibration itself refused the teacher (pre-flight or its retention check): say why, from the calibration
    card, and record it for the release (re-hardening only) like a failed gate.
    """
    import json

    from components._common import setup, unpin
    from dg_core import store
    from dg_core.publish import record_rejection

    setup(store_root)
    card_uri = unpin(calibration)
    card = json.loads((store.fetch(card_uri) / "card.json").read_text())
    reasons = [f"calibration {card.get('status', 'failed')}: {card.get('reason') or 'no reason recorded'}"]
    if not releases_prefix:
        print(f"{reasons[0]}; nothing published (card: {card_uri})")
        return ""
    uri = record_rejection(unpin(release), releases_prefix, hardened_prefix, reasons, card_uri)
    print(f"{reasons[0]} for {unpin(release)}, recorded at {uri}")
    return uri
