"""The download cache: ``$DG_CACHE_DIR`` (default ``~/.cache/dguard``). An entry is a directory holding its
``MANIFEST.json``, filled under a temporary name and renamed into place, and reused only after it verifies
again, so a crashed download or an edited cached file is never served."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from dg_core.store.base import MANIFEST, ArtifactCorrupt

log = logging.getLogger("dg_core.store")


def cache_dir() -> Path:
    """Where s3 artifacts are downloaded: ``$DG_CACHE_DIR`` or ``~/.cache/dguard``."""
    return Path(os.environ.get("DG_CACHE_DIR") or Path.home() / ".cache" / "dguard")


def cached(out: Path, check: Callable[[Path], None], fill: Callable[[Path], None], what: str) -> Path:
    """``out`` when it is there and ``check`` passes (raising :class:`ArtifactCorrupt` otherwise); else
    ``fill`` a temporary sibling, which must write ``MANIFEST.json``, and rename it to ``out``."""
    if (out / MANIFEST).is_file():
        try:
            check(out)
            log.info("fetch %s: using verified cache %s", what, out)
            return out
        except ArtifactCorrupt as e:
            log.warning("fetch %s: the cached copy fails verification (%s); fetching again", what, e)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        fill(tmp)
        shutil.rmtree(out, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / MANIFEST).is_file():
                raise  # otherwise another process finished the same download first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
