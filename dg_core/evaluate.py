"""Stage `evaluate`: a model's accuracy on a prepared dataset, greedy and sampled, with bootstrap CIs.

- greedy accuracy: one deterministic answer per prompt, scored by the task's (strict) scorer;
- sampled accuracy: the mean over ``k`` samples per prompt at ``temperature`` (what a distilling student sees
  from a teacher, and the soundness check a teacher needs before calibration);
- 95% percentile-bootstrap intervals resample *prompts* (samples of one prompt are not independent);
- per-group tables by a metadata field (``style`` or ``category`` when present) so a shift in answer style is
  visible next to the headline figure.

Published as ``eval.json`` (plus ``samples.jsonl`` with every response and its verdict) in one artifact.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dg_core import store
from dg_core.base.generate import generate_tokens
from dg_core.config import StageConfig, option
from dg_core.data import Example, load_split, task_of, with_task_budget
from dg_core.errors import DGError
from dg_core.models import load_model
from dg_core.models.limits import check_generation_fits
from dg_core.progress import Progress
from dg_core.store import output_uri
from dg_core.utils import set_threads_from_env

log = logging.getLogger(__name__)
EVAL_FILE = "eval.json"


def bootstrap_ci(per_prompt: Sequence[float], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of per-prompt scores."""
    x = np.asarray(per_prompt, dtype=np.float64)
    if x.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def _group_key(ex: Example, field: str) -> str:
    if field in ("", "none"):
        return "all"
    return str(ex.meta.get(field, "unknown"))


def evaluate_model(
    model: Any,
    tokenizer: Any,
    task: Any,
    examples: Sequence[Example],
    *,
    k: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    n_boot: int = 1000,
    group_by: str = "auto",
    greedy: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy and k-sample accuracy of ``model`` on ``examples`` (see module doc); returns the eval dict."""
    if not examples:
        raise DGError("evaluate: no examples, expected a non-empty split")
    prompts = [task.prompt(ex, tokenizer) for ex in examples]
    field = group_by
    if group_by == "auto":
        field = next((f for f in ("category", "style") if any(f in ex.meta for ex in examples)), "")
    result: dict[str, Any] = {"n": len(examples), "task": task.spec(), "group_by": field or None}
    rows: list[dict[str, Any]] = [{"id": ex.id, "group": _group_key(ex, field)} for ex in examples]
    per: dict[str, list[float]] = {}

    total = (len(prompts) if greedy else 0) + len(prompts) * k
    bar = Progress(total, "evaluate", enabled=progress, log_every=max(batch_size, total // 10), logger=log, unit="seq")
    timing: dict[str, dict[str, float]] = {}

    def run(mode: str, **kw: Any) -> list[list[str]]:
        t0 = time.perf_counter()
        roll = generate_tokens(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=bar.update, **kw
        )
        secs = time.perf_counter() - t0
        toks = sum(len(r) for r in roll.response_ids)
        timing[mode] = {
            "seconds": secs,
            "tokens": float(toks),
            "tokens_per_second": toks / max(secs, 1e-9),
            "truncation_rate": 1.0 - sum(roll.finished) / max(1, len(roll.finished)),
        }
        return roll.nested_texts()

    if greedy:
        outs = run("greedy", do_sample=False)
        scores = task.score_batch(examples, [o[0] for o in outs])
        per["greedy"] = [1.0 if s.correct else 0.0 for s in scores]
        for r, o, s in zip(rows, outs, scores):
            r["greedy"] = {"response": o[0], "correct": s.correct, "parsed": s.parsed}
    if k > 0:
        outs = run("sampled", n=k, temperature=temperature, seed=seed)
        flat_ex = [ex for ex in examples for _ in range(k)]
        flat = task.score_batch(flat_ex, [s for o in outs for s in o])
        correct = np.array([1.0 if s.correct else 0.0 for s in flat]).reshape(len(examples), k)
        per["sampled"] = correct.mean(1).tolist()
        for r, o, c in zip(rows, outs, correct):
            r["samples"] = [{"response": s, "correct": bool(v)} for s, v in zip(o, c)]
    for mode, vals in per.items():
        result[f"{mode}_accuracy"] = float(np.mean(vals))
        result[f"{mode}_ci95"] = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        for mode, vals in per.items():
            groups[r["group"]][mode].append(vals[i])
    result["groups"] = {
        g: {"n": len(next(iter(m.values()))), **{f"{mode}_accuracy": float(np.mean(v)) for mode, v in m.items()}}
        for g, m in sorted(groups.items())
    }
    result["accuracy"] = result.get("greedy_accuracy", result.get("sampled_accuracy"))
    bar.close()
    result["timing"] = timing
    result["seconds"] = sum(t["seconds"] for t in timing.values())
    result["tokens_per_second"] = sum(t["tokens"] for t in timing.values()) / max(result["seconds"], 1e-9)
    result["truncation_rate"] = timing.get("greedy", timing.get("sampled", {})).get("truncation_rate")
    result["_rows"] = rows
    return result


def table_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Per-model (or per-task) table: greedy and sampled accuracy with their CIs."""
    lines = ["| model | n | greedy acc [95% CI] | sampled acc [95% CI] |", "|---|---|---|---|"]
    for name, r in results.items():

        def cell(mode: str, r: dict[str, Any] = r) -> str:
            if f"{mode}_accuracy" not in r:
                return "-"
            lo, hi = r[f"{mode}_ci95"]
            return f"{r[f'{mode}_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"

        lines.append(f"| {name} | {r['n']} | {cell('greedy')} | {cell('sampled')} |")
    return "\n".join(lines) + "\n"


@dataclass
class Config(StageConfig):
    model: str = option("", "Model reference to evaluate (store URI, local dir, zoo:<name>).")
    dataset: str = option("", "Prepared dataset URI.")
    split: str = option("test", "Split to evaluate on.")
    limit: int = option(0, "Evaluate only the first N examples (0 = all).", ge=0)
    k: int = option(4, "Samples per prompt for sampled accuracy (0 = greedy only).", ge=0)
    temperature: float = option(1.0, "Sampling temperature for sampled accuracy.", gt=0)
    greedy: bool = option(True, "Also measure greedy accuracy.")
    max_new_tokens: int = option(
        0, "Response token budget (0: the task's own budget, e.g. 512 for math, 64 for the zoo's arithmetic).", ge=0
    )
    batch_size: int = option(64, "Sequences per generation batch.", ge=1)
    n_boot: int = option(1000, "Bootstrap resamples for the 95% intervals.", ge=10)
    group_by: str = option("auto", "Metadata field for the per-group table ('auto': category or style; '' none).")
    seed: int = option(0, "Sampling and bootstrap seed.")
    label: dict = option({}, "Record fields for the release gate (model, teacher, student, method, seed).")
    output: str = option("", "Where to publish eval.json (default: <store root>/evals/<model+dataset hash>).")
    device: str = option("auto", "auto, cpu or cuda.")

    def check(self) -> None:
        if not self.model:
            raise DGError("config field 'model' is required: expected a model reference")
        if not self.dataset:
            raise DGError("config field 'dataset' is required: expected a prepared dataset URI")
        if not self.greedy and self.k == 0:
            raise DGError("config fields 'greedy' and 'k': greedy=false with k=0 measures nothing; expected one on")


def evaluate_ref(cfg: Config, *, loaded: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.model`` without publishing (the attack suite calls this in-process)."""

    cfg = with_task_budget(cfg)
    model, tok = loaded if loaded is not None else load_model(cfg.model, device=cfg.device)
    task = task_of(cfg.dataset)
    examples = load_split(cfg.dataset, cfg.split)
    if cfg.limit:
        examples = examples[: cfg.limit]

    check_generation_fits(model, tok, [task.prompt(ex, tok) for ex in examples], cfg.max_new_tokens, name=cfg.model)
    res = evaluate_model(
        model,
        tok,
        task,
        examples,
        k=cfg.k,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        group_by=cfg.group_by,
        greedy=cfg.greedy,
    )
    res.update({"model": cfg.model, "dataset": cfg.dataset, "split": cfg.split})
    return res


def run(cfg: Config) -> dict:
    """Evaluate and publish ``eval.json`` + ``samples.jsonl``; returns the headline figures and the URI."""
    set_threads_from_env()

    cfg = with_task_budget(cfg)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("output", "device")}
    out = cfg.output or output_uri("evals", params)
    res = evaluate_ref(cfg)
    rows = res.pop("_rows")
    record = {**cfg.label, "accuracy": res["accuracy"], "n": res["n"], "uri": cfg.model}
    res["record"] = record
    with tempfile.TemporaryDirectory(prefix="dg-eval-") as tmp:
        (Path(tmp) / EVAL_FILE).write_text(json.dumps(res, indent=2, sort_keys=True))
        (Path(tmp) / "eval.md").write_text(table_markdown({cfg.model: res}))
        with open(Path(tmp) / "samples.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        store.publish(tmp, out, metadata={"kind": "eval", "model": cfg.model, "accuracy": res["accuracy"]})
    headline = {k: res[k] for k in res if k.endswith(("_accuracy", "_ci95"))}
    return {**headline, "accuracy": res["accuracy"], "n": res["n"], "record": record, "eval": out}


def read_eval(uri: str) -> dict[str, Any]:
    """``eval.json`` of a published evaluation."""
    d = store.fetch(uri)
    p = d / EVAL_FILE
    if not p.is_file():
        raise DGError(f"{uri}: no {EVAL_FILE}, expected an artifact written by `dguard evaluate`")
    return json.loads(p.read_text())
