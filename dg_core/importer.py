"""`dguard import SRC DST`: copy a model folder into the store as a published, sha256-pinned artifact.

SRC is what users actually have: a Hugging Face folder synced into the bucket as is (``aws s3 sync``,
``mc mirror``; config.json + safetensors + tokenizer, no MANIFEST.json), a local directory, or a published
artifact. Its files are listed before and after the copy; a folder still being uploaded is refused (retry
later) rather than pinned half-written. DST gets a manifest whose ``metadata.source_sha256`` pins what was read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dg_core import store


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("src", help="the folder to import: s3://…, file://… or a local directory")
    parser.add_argument("dst", help="the artifact URI to publish it as (s3://… or file://…)")


def main(args: argparse.Namespace, verb: str = "import") -> int:
    src = args.src if "://" in args.src else Path(args.src).expanduser().resolve().as_uri()
    manifest = store.import_dir(src, args.dst)
    summary = {
        "uri": manifest["uri"],
        "files": len(manifest["files"]),
        "bytes": sum(f["size"] for f in manifest["files"].values()),
        "source_sha256": manifest["metadata"]["source_sha256"],
    }
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
