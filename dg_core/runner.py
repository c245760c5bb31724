"""Run one stage: the entry the CLI, every KFP component and the benchmarks share (``dguard <stage>``).

Above the stages and the launcher in the layers: it builds the stage's Config, then runs it here, in several
processes (:mod:`dg_core.launch`) or as a Kubeflow Trainer TrainJob (:mod:`dg_core.launch.trainjob`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dg_core import launch
from dg_core.config import from_dict, load_config, merge_overrides
from dg_core.errors import DGError, redact
from dg_core.launch import trainjob as tj
from dg_core.stages import get_stage

log = logging.getLogger("dguard")


def run_stage(
    name: str,
    values: Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    config_path: str | None = None,
    num_processes: int = 1,
    strategy: str = "ddp",
    trainjob: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build stage ``name``'s Config and run it: what the CLI, every component and the benchmarks call.

    The config comes from ``values`` (a mapping: how KFP parameters arrive) or else from the ``name`` section of
    the YAML file ``config_path``, then ``overrides`` apply (``key=value`` strings from a command line, or a
    mapping of free-form options); either way it is validated the same, and logged with its secrets masked.
    With ``num_processes > 1`` (a task holding several GPUs) the stage runs in that many processes with the
    packaged ``strategy`` config (:mod:`dg_core.launch`); with ``trainjob`` (keyword arguments of
    :func:`dg_core.launch.trainjob.run_stage`: num_nodes, gpus_per_node, runtime, image, ...) it runs as a Kubeflow
    Trainer TrainJob and this process only follows it. Either way rank 0's summary is the result.
    """
    mod = get_stage(name).load()
    if isinstance(overrides, Mapping):
        values, overrides = {**(values or {}), **overrides}, ()
    if values is None:
        cfg = load_config(mod.Config, config_path, overrides, section=name)
    elif config_path:
        raise DGError(f"stage {name}: got both config values and a config file {config_path!r}; expected one")
    else:
        cfg = from_dict(mod.Config, merge_overrides(dict(values), overrides))
    log.info("%s config: %s", name, json.dumps(redact(cfg.to_dict()), default=str, sort_keys=True))
    if trainjob:
        return tj.run_stage(name, cfg.to_dict(), **trainjob)
    if num_processes > 1:
        return launch.run_stage(name, cfg.to_dict(), num_processes, strategy=strategy)
    return mod.run(cfg)
