"""`dguard` — the one entry point for people, tests and the container images.

    dguard <stage> [--config FILE] [key=value ...]     run one stage (see `dguard --help`)
    dguard <stage> --help                               the stage's documented fields
    dguard run <pipeline> --local [key=value ...]       run a pipeline with kfp.local
    dguard submit / schedule                            talk to a Kubeflow Pipelines server

Every stage logs the config it resolved, prints its JSON summary on stdout, and on bad input prints one
line `dguard <stage>: error: ...` and exits 2. Anything else that goes wrong (a bug) prints one line
`dguard <stage>: internal error: ...` and exits 1; `-v` adds the traceback. A closed stdout (`dguard --help |
head`) ends the command quietly with exit code 141, as a shell reports a SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from dg_core import __version__
from dg_core.config import StageConfig
from dg_core.errors import DGError, one_line
from dg_core.runner import run_stage
from dg_core.stages import STAGES, get_stage
from dg_core.utils import env_threads

log = logging.getLogger("dguard")

# Verbs beyond the stages (pipelines, remote runs) register here: name -> (module, summary).
# Each module exposes ``add_arguments(parser)`` and ``main(args) -> int``.
# KFP ones live in the `pipelines` package (dg_core itself knows nothing of KFP); only the module name is here.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipelines.local", "Run a pipeline locally with kfp.local (e.g. `dguard run calibrate --local`)."),
    "compile": ("pipelines.compile", "Compile every pipeline to pipelines/compiled/<name>.yaml."),
    "upload": ("pipelines.remote", "Upload compiled pipelines to a Kubeflow Pipelines server."),
    "submit": ("pipelines.remote", "Submit a pipeline run to a Kubeflow Pipelines server."),
    "schedule": ("pipelines.remote", "Create a recurring run (e.g. the re-hardening schedule)."),
    "import": ("dg_core.importer", "Copy a model folder (plain HF, or published) into the store, pinned by sha256."),
}


def _stage_help(name: str) -> str:

    stage = get_stage(name)
    cfg_cls: type[StageConfig] = stage.load().Config
    lines = [f"dguard {name} [--config FILE] [key=value ...]", "", stage.summary, "", "fields:"]
    for field, tp, default, help_ in cfg_cls.help_rows():
        lines.append(f"  {field} ({tp}, default {default!r})")
        if help_:
            lines.append(f"      {help_}")
    return "\n".join(lines)


def _main_parser() -> argparse.ArgumentParser:
    lines = ["stages:"] + [f"  {s.name:<10} {s.summary}" for s in STAGES.values()]
    lines += ["", "commands:"] + [f"  {n:<10} {summary}" for n, (_, summary) in COMMANDS.items()]
    p = argparse.ArgumentParser(
        prog="dguard",
        description="distillation-guards: a calibration knob for LLM distillability.",
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("verb", nargs="?", help="a stage or command (see below)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_BROKEN_PIPE = 141


def _log_level(verbose: bool) -> int:
    if verbose:
        return logging.DEBUG
    name = os.environ.get("DG_LOG_LEVEL", "").strip().upper() or "INFO"
    if name not in LOG_LEVELS:
        raise DGError(f"DG_LOG_LEVEL={os.environ['DG_LOG_LEVEL']!r}: expected one of {', '.join(LOG_LEVELS)}")
    return getattr(logging, name)


def main(argv: Sequence[str] | None = None) -> int:
    """`dguard`'s entry point: an exit code, never a traceback unless -v asks for one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # the reader went away (`dguard --help | head`): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except DGError as e:
        print(f"dguard: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, the traceback only on request
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"dguard: internal error: {one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    parser = _main_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=_log_level(args.verbose),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.environ.get("DG_THREADS"):  # checked up front: a typo fails at once, whatever the stage
        env_threads()
    if args.version:
        print(__version__)
        return 0
    if not args.verb:
        parser.print_help()
        return 0
    verb, rest = args.verb, args.rest
    try:
        if verb in COMMANDS:
            import importlib

            mod = importlib.import_module(COMMANDS[verb][0])
            sub = argparse.ArgumentParser(prog=f"dguard {verb}", description=COMMANDS[verb][1])
            mod.add_arguments(sub, verb)
            return int(mod.main(sub.parse_intermixed_args(rest), verb) or 0)
        get_stage(verb)
        sp = argparse.ArgumentParser(prog=f"dguard {verb}", add_help=False)
        sp.add_argument("--config", "-c", default=None)
        sp.add_argument("-h", "--help", action="store_true")
        sp.add_argument("overrides", nargs="*")
        sargs = sp.parse_args(rest)
        if sargs.help:
            print(_stage_help(verb))
            return 0
        summary = run_stage(verb, overrides=sargs.overrides, config_path=sargs.config)
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch / torchrun, rank 0 speaks for the run
            print(json.dumps(summary, indent=2, default=str, sort_keys=True))
        return 0
    except DGError as e:
        print(f"dguard {verb}: error: {e}", file=sys.stderr)
        return e.exit_code
    except (RecursionError, UnicodeError) as e:  # input too deep or not text, wherever it was read
        print(f"dguard {verb}: error: unreadable input ({one_line(e)})", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user named: exists, missing, not a folder, no permission
        if isinstance(e, BrokenPipeError):
            raise
        if e.filename is None:
            raise
        if args.verbose:
            import traceback

            traceback.print_exc()
        what = e.strerror or type(e).__name__
        print(f"dguard {verb}: error: {what}: {str(e.filename)!r}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dguard {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback only with -v
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"dguard {verb}: internal error: {one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
