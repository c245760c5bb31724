"""Publish a gated, hardened model with its calibration card — and find releases that still need one.

A hardened model is published as a *twin* of the release it came from: the release
``<releases_prefix>/<name>`` gets ``<hardened_prefix>/<name>``. The twin holds the calibrated model's files plus
``calibration_card.json`` / ``calibration_card.md`` (provenance: release and model sha256, the calibration card,
the gate decision) and its manifest metadata records the release's content sha, so a release re-published with
new weights is seen as pending again.

Publishing refuses, with one line, unless the gate decision passed *and* names exactly this model (the sha256
of its manifest's files), so a stale or foreign gate result can never release a model. Only the files that
manifest lists — the ones the gate pinned — are released: each is copied as a regular file and checked against
its pinned sha256 on the way. A model folder holding a symbolic link or a special file (device, FIFO, socket)
anywhere is refused outright (a link can point at credentials or at ``/etc``); unlisted regular files are left
behind with a warning. Nothing is written before those checks pass; the store's publish is itself atomic
(manifest last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.config import StageConfig, option
from dg_core.errors import DGError
from dg_core.gate import read_result, to_markdown
from dg_core.store import PLAIN, content_sha

log = logging.getLogger("dguard.publish")

CARD_JSON = "calibration_card.json"
CARD_MD = "calibration_card.md"
KIND = "hardened-model"


@dataclass
class Config(StageConfig):
    model: str = option("", "URI of the calibrated (merged) model to publish.")
    gate: str = option("", "URI of the gate decision (the artifact `dguard gate output=...` wrote).")
    card: str = option("", "URI of the calibration artifact whose card (card.json / card.md) to include.")
    release: str = option("", "URI of the original release this model hardens (provenance, twin naming).")
    releases_prefix: str = option("", "Prefix the releases live under (with hardened_prefix: names the twin).")
    hardened_prefix: str = option("", "Prefix hardened twins are published under.")
    dest: str = option("", "Explicit destination URI (default: the release's twin under hardened_prefix).")

    def check(self) -> None:
        for f in ("model", "gate"):
            if not getattr(self, f):
                raise DGError(f"config field '{f}' is required: the {f} URI to publish from")
        if not self.dest and not (self.release and self.releases_prefix and self.hardened_prefix):
            raise DGError(
                "config field 'dest' is required unless release, releases_prefix and hardened_prefix are all set"
            )


def _canon(uri: str) -> str:
    """One spelling per location (a local path, file:// and s3:// forms compare equal to themselves)."""
    s, key = store.open_store(uri)
    return s.uri(key).rstrip("/")


def _rel(uri: str, prefix: str) -> str | None:
    """``uri`` relative to ``prefix`` (None when it is not under it)."""
    u, p = _canon(uri), _canon(prefix)
    if u.startswith(p + "/"):
        return u[len(p) + 1 :]
    return None


def twin_uri(release_uri: str, releases_prefix: str, hardened_prefix: str) -> str:
    """Where the hardened twin of ``release_uri`` lives."""
    rel = _rel(release_uri, releases_prefix)
    if not rel:
        raise DGError(f"release {release_uri}: not under releases prefix {releases_prefix}")
    return store.join(_canon(hardened_prefix), rel)


def list_releases(releases_prefix: str, hardened_prefix: str) -> list[str]:
    """Every published artifact and every plain model folder (``config.json``, no manifest) under
    ``releases_prefix`` that is not itself under ``hardened_prefix``."""
    found = set(store.list_artifacts(releases_prefix)) | set(store.list_model_folders(releases_prefix))
    return sorted(u for u in found if _rel(u, hardened_prefix) is None)


def settle_seconds() -> float:
    """How long a plain release's listing must stay unchanged before it is hardened (``DG_RELEASE_SETTLE_S``)."""
    raw = os.environ.get("DG_RELEASE_SETTLE_S", "5")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (0.0 <= value < 86400.0):
        raise DGError(f"DG_RELEASE_SETTLE_S={raw!r}: expected seconds in [0, 86400)")
    return value


REJECTED = "_rejected"


def rejection_uri(release_uri: str, releases_prefix: str, hardened_prefix: str) -> str:
    """Where a failed gate for ``release_uri`` is recorded (beside the twins, never mistaken for one)."""
    rel = _rel(release_uri, releases_prefix)
    if not rel:
        raise DGError(f"release {release_uri}: not under releases prefix {releases_prefix}")
    return store.join(_canon(hardened_prefix), REJECTED, rel)


def record_rejection(
    release_uri: str, releases_prefix: str, hardened_prefix: str, reasons: list[str], evidence: str
) -> str:
    """Record that hardening this release content was rejected (by the release gate, or by calibration's own
    checks), so a recurring run does not spend another calibration on the same weights with the same outcome
    (``retry_rejected`` overrides). ``evidence`` is the URI of the gate decision or calibration card."""
    if not reasons:
        raise DGError(f"rejection of {release_uri}: no reasons given, expected why it was rejected")
    uri = rejection_uri(release_uri, releases_prefix, hardened_prefix)
    body = {"release": release_uri, "reasons": list(reasons), "evidence": evidence}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rejection.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        meta = {"kind": "rejection", "release_sha256": content_sha(release_uri), **body}
        return store.publish(tmp, uri, metadata=meta)["uri"]


def gate_reasons(gate_uri: str) -> list[str]:
    """Why a published gate decision failed (raises when it passed: there is nothing to reject)."""
    gate = read_result(gate_uri)
    if gate["passed"]:
        raise DGError(f"gate {gate_uri} passed: nothing to reject, publish the model instead")
    return list(gate.get("reasons") or ["gate failed"])


def pending_releases(
    releases_prefix: str, hardened_prefix: str, *, retry_rejected: bool = False
) -> list[dict[str, str]]:
    """Releases under ``releases_prefix`` without an up-to-date hardened twin, in name order.

    A twin is up to date when it is published and records the release's current content sha. A release whose
    current content the gate already rejected is skipped unless ``retry_rejected``. Artifacts under
    ``hardened_prefix`` are never releases themselves (the prefixes may nest).
    """
    if _canon(releases_prefix) == _canon(hardened_prefix):
        raise DGError(f"releases_prefix and hardened_prefix are both {releases_prefix}: expected different prefixes")
    if _rel(releases_prefix, hardened_prefix) is not None:
        raise DGError(f"releases_prefix {releases_prefix} lies inside hardened_prefix {hardened_prefix}")
    pending = []
    releases = list_releases(releases_prefix, hardened_prefix)
    first = {u: content_sha(u) for u in releases}
    if any(sha.startswith(PLAIN) for sha in first.values()):
        time.sleep(settle_seconds())  # a plain folder still being uploaded changes between two listings
    for uri in releases:
        sha = content_sha(uri)
        if sha != first[uri]:
            log.info("release %s is still being uploaded (its files changed between two listings): next run", uri)
            continue
        twin = twin_uri(uri, releases_prefix, hardened_prefix)
        if store.is_published(twin):
            if store.read_manifest(twin).get("metadata", {}).get("release_sha256") == sha:
                continue
            log.info("twin %s is stale (release %s changed): re-hardening", twin, uri)
        rejected = rejection_uri(uri, releases_prefix, hardened_prefix)
        if not retry_rejected and store.is_published(rejected):
            if store.read_manifest(rejected).get("metadata", {}).get("release_sha256") == sha:
                log.info("release %s: the gate rejected this content before (%s); skipped", uri, rejected)
                continue
        pending.append({"release": uri, "name": _rel(uri, releases_prefix) or uri, "sha256": sha, "hardened": twin})
    return pending


def _read_card(uri: str) -> tuple[dict[str, Any], str]:
    """The calibration card (JSON, Markdown) found in a calibration artifact."""
    d = Path(store.fetch(uri))
    for name in (CARD_JSON, "card.json"):
        if (d / name).is_file():
            try:
                card = json.loads((d / name).read_text())
            except json.JSONDecodeError as e:
                raise DGError(f"{uri}/{name}: invalid JSON ({e.msg})") from None
            md_path = d / name.replace(".json", ".md")
            return card, md_path.read_text() if md_path.is_file() else ""
    raise DGError(f"{uri}: no card.json or {CARD_JSON}, expected the calibration artifact of `dguard calibrate`")


def _card_markdown(card: dict[str, Any], calib_md: str, gate: dict[str, Any]) -> str:

    lines = [
        "# Calibration card",
        "",
        f"- release: `{card['release']['uri'] or '-'}` (sha256 `{(card['release']['sha256'] or '-')[:16]}`)",
        f"- model: `{card['model']['uri']}` (sha256 `{card['model']['sha256'][:16]}`)",
        f"- published: {card['published_at']}",
        "",
    ]
    if calib_md:
        lines += [calib_md.strip(), ""]
    return "\n".join(lines) + "\n" + to_markdown(gate)


def check_tree(root: Path, what: str) -> None:
    """Refuse a tree holding anything but regular files and folders (symbolic links, devices, FIFOs, sockets).

    Walks without following links, so a link to a directory is seen as a link and never descended into.
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            mode = os.lstat(p).st_mode
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise DGError(
                    f"{what}: {rel!r} is a symbolic link (to {os.readlink(p)!r}); expected only regular files and "
                    "folders in a tree to publish: remove it, or copy the file it points to into the folder"
                )
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise DGError(
                    f"{what}: {rel!r} is a special file (not a regular file or folder); expected only regular files"
                )


def _copy_pinned(src_dir: Path, out: Path, files: dict[str, dict[str, Any]], what: str) -> None:
    """Copy exactly the pinned ``files`` (rel -> sha256/size) from ``src_dir`` to ``out``, refusing anything that is
    not a regular file and verifying each copy's sha256 against the pin as it is written."""
    for rel, pin in sorted(files.items()):
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(src_dir / rel, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise DGError(f"{what}: cannot read pinned file {rel!r} as a regular file ({e.strerror})") from None
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "rb") as fi:
            if not stat.S_ISREG(os.fstat(fi.fileno()).st_mode):
                raise DGError(f"{what}: pinned file {rel!r} is not a regular file")
            with open(dst, "wb") as fo:
                while chunk := fi.read(4 * 1024 * 1024):
                    h.update(chunk)
                    fo.write(chunk)
                    size += len(chunk)
        if h.hexdigest() != pin["sha256"] or size != pin["size"]:
            raise DGError(
                f"{what}: {rel!r} changed after it was gated (sha256 {h.hexdigest()[:16]}..., the gate pinned "
                f"{pin['sha256'][:16]}...): nothing published; gate the model again"
            )


def run(cfg: Config) -> dict[str, Any]:
    """Publish ``model`` as the hardened twin, if and only if ``gate`` passed for exactly this model."""
    gate = read_result(cfg.gate)
    if not gate["passed"]:
        raise DGError(f"gate {cfg.gate} did not pass, nothing published: {'; '.join(gate.get('reasons', []))}")
    manifest = store.read_manifest(cfg.model)
    pinned: dict[str, dict[str, Any]] = manifest["files"]
    sha = store.files_sha(pinned)
    judged = (gate.get("model") or {}).get("sha256")
    if not judged:
        raise DGError(f"gate {cfg.gate} does not name the model it judged: run `dguard gate` with model=<uri>")
    if judged != sha:
        raise DGError(
            f"gate {cfg.gate} judged model sha256 {judged[:16]}..., but {cfg.model} is {sha[:16]}...: gate it again"
        )
    dest = cfg.dest or twin_uri(cfg.release, cfg.releases_prefix, cfg.hardened_prefix)
    for src in filter(None, (cfg.release, cfg.model)):
        if _canon(dest) == _canon(src) or _rel(dest, src) is not None:
            raise DGError(f"dest {dest}: would overwrite {src}; expected a separate hardened location")
    release_sha = content_sha(cfg.release) if cfg.release else None

    if store.is_published(dest):
        meta = store.read_manifest(dest).get("metadata", {})
        if meta.get("model_sha256") == sha and meta.get("release_sha256") == release_sha:
            log.info("%s already holds this hardened model: nothing to do", dest)
            return {"uri": dest, "published": False, "reason": "already published", "model_sha256": sha}

    calib_card, calib_md = _read_card(cfg.card) if cfg.card else ({}, "")
    card = {
        "kind": KIND,
        "release": {"uri": cfg.release or None, "sha256": release_sha},
        "model": {"uri": cfg.model, "sha256": sha},
        "calibration": calib_card,
        "gate": gate,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    # A local model is read in place (every pinned file is hashed as it is copied, so a verifying fetch would
    # only hash it twice); an s3 one is fetched (downloaded and verified) first.
    st, key = store.open_store(cfg.model)
    what = f"publish {cfg.model}"
    if isinstance(st, store.LocalStore):
        check_tree(st.path(key), what)  # the whole artifact folder, every version of it included
        src_dir = store.local_payload(cfg.model)
    else:
        src_dir = Path(store.fetch(cfg.model))
    check_tree(src_dir, what)
    unlisted = sorted(
        p.relative_to(src_dir).as_posix()
        for p in src_dir.rglob("*")
        if p.is_file() and p.relative_to(src_dir).as_posix() not in pinned and p.name != store.MANIFEST
    )
    if unlisted:
        log.warning("%s: %d file(s) not in the gated manifest are not published: %s", what, len(unlisted), unlisted)
    clash = sorted({CARD_JSON, CARD_MD} & set(pinned))
    if clash:
        raise DGError(f"{what}: the model already holds {clash[0]}, which publish writes; expected a model folder")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        out.mkdir()
        _copy_pinned(src_dir, out, pinned, what)
        (out / CARD_JSON).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
        (out / CARD_MD).write_text(_card_markdown(card, calib_md, gate))
        metadata = {
            "kind": KIND,
            "hardened_from": cfg.release or None,
            "release_sha256": release_sha,
            "model_sha256": sha,
            "direction": gate.get("direction"),
            "retention": gate.get("retention"),
            "transfer": gate.get("transfer"),
        }
        manifest = store.publish(out, dest, metadata=metadata)
    released = {rel: f for rel, f in manifest["files"].items() if rel not in (CARD_JSON, CARD_MD)}
    if {rel: (f["sha256"], f["size"]) for rel, f in released.items()} != {
        rel: (f["sha256"], f["size"]) for rel, f in pinned.items()
    }:
        raise DGError(f"{what}: the release at {dest} does not hold exactly the gated files; do not use it")
    return {
        "uri": manifest["uri"],
        "published": True,
        "model_sha256": sha,
        "release": cfg.release or None,
        "card": store.join(manifest["uri"], CARD_MD),
    }
