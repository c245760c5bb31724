"""`dguard compile`: write every pipeline to ``pipelines/compiled/<name>.yaml`` (what `kfp run create` takes).

The compiled files are committed; a test recompiles and fails when they are out of date with the source, and
checks that `kfp dsl compile` on the source module gives the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pipelines
from dg_core.errors import DGError


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options of `dguard compile`."""
    parser.add_argument(
        "names", nargs="*", help=f"pipelines to compile (default: all of {', '.join(pipelines.PIPELINES)})"
    )
    parser.add_argument("--out", default=None, help="output folder (default pipelines/compiled)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when a compiled file is stale")
    add_option_argument(parser)


def add_option_argument(parser: argparse.ArgumentParser) -> None:
    """``--option key=value``: a compile option (pipelines._k8s.CompileOptions) other than its default."""
    from pipelines._k8s import CompileOptions

    names = ", ".join(f.name for f in dataclasses.fields(CompileOptions))
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"compile option ({names}); repeatable. The committed packages use the defaults.",
    )


def parse_options(texts: list[str]) -> Any:
    """CompileOptions from ``key=value`` strings (one-line DGError on a bad key or value)."""
    from dg_core.config import load_config
    from pipelines._k8s import CompileOptions

    return load_config(CompileOptions, None, texts)


def compile_one(name: str, path: Path, options: Any = None) -> None:
    """Compile pipeline ``name`` to ``path`` (with :class:`pipelines._k8s.CompileOptions` ``options``)."""
    import contextlib
    import warnings

    from kfp import compiler

    from pipelines._k8s import CompileOptions, compile_options

    path.parent.mkdir(parents=True, exist_ok=True)
    custom = options is not None and options != CompileOptions()
    with compile_options(options) if custom else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiler.Compiler().compile(pipelines.load(name), str(path))


def main(args: argparse.Namespace, verb: str = "compile") -> int:
    """Compile the named (or all) pipelines; with --check report stale files instead."""
    import tempfile

    names = args.names or list(pipelines.PIPELINES)
    for n in names:
        pipelines.check_name(n)
    options = parse_options(getattr(args, "option", []))
    out = Path(args.out) if args.out else pipelines.COMPILED_DIR
    if args.option and out.resolve() == pipelines.COMPILED_DIR.resolve():
        raise DGError("dguard compile --option: pass --out DIR (pipelines/compiled holds the default packages)")
    stale = []
    for name in names:
        target = out / f"{name}.yaml"
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = Path(tmp) / f"{name}.yaml"
                compile_one(name, fresh, options)
                if not target.is_file() or target.read_bytes() != fresh.read_bytes():
                    stale.append(str(target))
            continue
        compile_one(name, target, options)
        print(f"{name}: {target}")
    if stale:
        raise DGError(f"compiled pipelines out of date: {', '.join(stale)}; run `dguard compile`")
    return 0
