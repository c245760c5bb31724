"""`make demo` (``python -m pipelines.demo``): the knob turning both ways, on one screen.

The experiment of :mod:`pipelines.experiment` with the settings in ``pipelines/experiments/demo.yaml`` (why they
are sized so: docs/results/demo.md); ``--small`` overlays ``small.yaml`` (the graph in a few minutes, no claim
about the knob). The runner's logs go to ``.dg/demo/demo.log``; the terminal gets one line per task and the
table. Every step is published to the store and reused by the next run (the bootstrap included).
"""

from __future__ import annotations

import sys

from pipelines.experiment import EXPERIMENTS, main

if __name__ == "__main__":
    sys.exit(main(None, [EXPERIMENTS / "demo.yaml"], EXPERIMENTS / "small.yaml", "python -m pipelines.demo", __doc__))
