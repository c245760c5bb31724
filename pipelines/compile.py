"""`dguard compile`: write every pipeline to ``pipelines/compiled/<name>.yaml`` (what `kfp run create` takes).

The compiled files are committed; a test recompiles and fails when they are out of date with the source, and
checks that `kfp dsl compile` on the source module gives the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pipelines
from dg_core.errors import DGError


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options of `dguard compile`."""
    parser.add_argument(
        "names", nargs="*", help=f"pipelines to compile (default: all of {', '.join(pipelines.PIPELINES)})"
    )
    parser.add_argument("--out", default=None, help="output folder (default pipelines/compiled)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when a compiled file is stale")


def compile_one(name: str, path: Path) -> None:
    """Compile pipeline ``name`` to ``path``."""
    import warnings

    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiler.Compiler().compile(pipelines.load(name), str(path))


def main(args: argparse.Namespace, verb: str = "compile") -> int:
    """Compile the named (or all) pipelines; with --check report stale files instead."""
    import tempfile

    names = args.names or list(pipelines.PIPELINES)
    for n in names:
        pipelines.check_name(n)
    out = Path(args.out) if args.out else pipelines.COMPILED_DIR
    stale = []
    for name in names:
        target = out / f"{name}.yaml"
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = Path(tmp) / f"{name}.yaml"
                compile_one(name, fresh)
                if not target.is_file() or target.read_bytes() != fresh.read_bytes():
                    stale.append(str(target))
            continue
        compile_one(name, target)
        print(f"{name}: {target}")
    if stale:
        raise DGError(f"compiled pipelines out of date: {', '.join(stale)}; run `dguard compile`")
    return 0
