"""Store URIs: ``s3://bucket/prefix``, ``file:///abs/dir`` or a plain local path, parsed and joined."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dg_core.errors import DGError, redact_url

SCHEMES = ("s3://", "file://")


def is_store_uri(ref: str) -> bool:
    """Whether ``ref`` is written as a store URI (as opposed to a local path, a hub id or ``zoo:<name>``)."""
    return str(ref).startswith(SCHEMES)


def default_root() -> str:
    """Where stages publish unless told otherwise: ``$DG_STORE_ROOT`` or ``file://$PWD/.dg/store``."""
    root = os.environ.get("DG_STORE_ROOT", "").strip()
    if root:
        return _canonical(root)
    return (Path.cwd() / ".dg" / "store").as_uri()


def _canonical(uri: str) -> str:
    scheme, bucket, path = parse_uri(uri)
    if scheme == "s3":
        return f"s3://{bucket}/{path}" if path else f"s3://{bucket}"
    return Path(path).as_uri()


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_uri(uri: str) -> tuple[str, str | None, str]:
    """Split a store URI into (scheme, bucket, path): ("s3", bucket, key prefix) or ("file", None, abs path)."""
    if not isinstance(uri, str) or not uri.strip():
        raise DGError(f"store URI {uri!r} is empty: expected s3://bucket/prefix, file:///abs/dir or a local path")
    uri = uri.strip()
    shown = redact_url(uri)
    if _CONTROL_RE.search(unquote(uri)):
        raise DGError(f"store URI {shown!r} contains a control character: expected a printable URI or path")
    if "://" not in uri:
        try:
            return "file", None, os.path.normpath(Path(uri).expanduser().absolute())
        except RuntimeError as e:  # ~user of an unknown user, or no home directory
            raise DGError(f"store path {shown!r}: {e} (expected an absolute or relative path)") from None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError as e:
        raise DGError(
            f"store URI {shown!r} is malformed ({e}): expected s3://bucket/prefix or file:///abs/dir"
        ) from None
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise DGError(
                f"store URI {shown!r}: bucket {redact_url('s3://' + bucket)[5:]!r} is not a valid S3 bucket name "
                "(expected 3-63 lowercase letters, digits, dots or hyphens)"
            )
        key = clean_key(unquote(parts.path), uri)
        return "s3", bucket, key
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            host = redact_url("file://" + parts.netloc)[7:]
            raise DGError(f"store URI {shown!r} names host {host!r}: expected file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise DGError(f"store URI {shown!r} is not absolute: expected file:///absolute/path")
        return "file", None, os.path.normpath(path)
    raise DGError(
        f"store URI {shown!r} has unsupported scheme {scheme!r}: expected s3://bucket/prefix, "
        "file:///abs/dir or a local path"
    )


def clean_key(key: str, where: str) -> str:
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DGError(f"{where!r}: '..' is not allowed in a store path")
    return "/".join(parts)


def join(uri: str, *parts: str) -> str:
    """``uri`` with path segments appended (``join("s3://b/runs", "r1", "model")``); keeps the URI's form."""
    tail = clean_key("/".join(str(p) for p in parts), f"join({uri!r}, ...)")
    if not tail:
        return uri
    if "://" not in uri:
        return str(Path(uri) / tail)
    return uri.rstrip("/") + "/" + tail


def key_join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def output_uri(kind: str, params: Mapping[str, Any], *, root: str | None = None, label: str = "") -> str:
    """Where a stage publishes unless told: ``<root>/<kind>/[<label>-]<key>``, the one naming scheme.

    ``key`` is a short hash of ``kind`` and ``params``, so the same inputs land in the same place (a restarted
    stage finds its checkpoint, a finished one its result, KFP reruns overwrite nothing else) and different
    inputs never collide. ``label`` is a readable prefix (calibrate: ``<teacher>-eta<eta>``); components name
    their kind ``runs/<stage>``; ``root`` defaults to :func:`default_root`.
    """
    body = json.dumps({"kind": kind, **params}, sort_keys=True, default=str)
    key = hashlib.sha256(body.encode()).hexdigest()[:16]
    return join(root or default_root(), kind, f"{label}-{key}" if label else key)
