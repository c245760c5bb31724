"""Progress for long stages: a tqdm bar in a terminal, one log line every N steps elsewhere (a pod's log).

A pipeline task has no terminal, so a bar there is either silent or a wall of carriage returns; the log line
carries the same figures (the caller's, e.g. rewards, KL, accuracy, tokens/s) plus elapsed time and an ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["Progress"]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """``update(n, **figures)`` after each unit of work; ``close()`` at the end (or use it as a context manager)."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        log_every: int = 10,
        logger: logging.Logger | None = None,
        initial: int = 0,
        unit: str = "step",
        tty: bool | None = None,
    ):
        self.total, self.desc, self.done, self.unit = total, desc, initial, unit
        self.log_every = max(1, log_every)
        self.log = logger or logging.getLogger("dg_core.progress")
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._start = initial
        self._next_log = initial + self.log_every
        use_bar = enabled and (sys.stderr.isatty() if tty is None else tty)
        self.bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit)

    def eta(self) -> float | None:
        did = self.done - self._start
        if did <= 0:
            return None
        return (time.perf_counter() - self._t0) / did * max(0, self.total - self.done)

    def update(self, n: int = 1, **figures: Any) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if figures:
                self.bar.set_postfix({k: _fmt(v) for k, v in figures.items()})
            return
        if not self.enabled or (self.done < self._next_log and self.done < self.total):
            return
        self._next_log = self.done + self.log_every
        eta = self.eta()
        parts = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
        self.log.info(
            "%s %s %d/%d%s, %.0f s elapsed, ETA %s",
            self.desc,
            self.unit,
            self.done,
            self.total,
            f" {parts}" if parts else "",
            time.perf_counter() - self._t0,
            f"{eta:.0f} s" if eta is not None else "?",
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
