"""Stage `diagnose`: measure the distillation traps of a (teacher, student-or-proxy, dataset) triple.

Answers "why would distilling this teacher into this student fail?" with the paper's three traps and the
student's symptoms, and publishes a JSON report (schema below), an HTML report with plots, Prometheus metrics
and a one-line distillability summary. Teacher and student may use different tokenizers (see
:mod:`dg_core.traps.measures` for how positions and outcomes are matched).

Steps: greedy answers of both models (accuracy, degradation); ``n_samples`` sampled responses per prompt from
the teacher (off-policy prefixes for the student) and from the student (on-policy prefixes); per-position
divergences on both; sequence-level gap; wrong-trace preference; student overconfidence and self-correction.

Published artifact (``output``, default ``<store root>/diagnose/<config hash>``)::

    report.json   the report (schema ``dg.diagnose/v1``)
    report.html   the same, readable, with plots embedded as PNG (base64)
    summary.txt   the one-line distillability summary

``report.json`` schema ``dg.diagnose/v1`` (None where a measure had nothing to measure):

- ``schema``, ``summary`` (the one line), ``distillability`` (``high`` | ``medium`` | ``low``: 0, 1 or >= 2
  traps flagged), ``flags`` (names of flagged traps and symptoms), ``config`` (the resolved stage config);
- ``teacher`` / ``student``: ``ref``, ``vocab``, ``params``; ``dataset``: ``uri``, ``split``, ``task``, ``n``;
- ``vocab``: ``n_shared``, ``identical``, ``teacher_vocab``, ``student_vocab``, ``*_coverage``, ``n_class``;
- ``traps.tail_noise``: ``n_positions``, ``teacher_entropy`` (nats), ``teacher_tail_mass`` {k: mean mass
  outside the teacher's top-k}, ``forward``/``reverse`` {``full``, ``per_k``: [{k, head, tail, tail_share,
  class_head, class_tail, other_head, other_tail}], ``class_share``} (KL summed over positions), ``flag``, ``why``;
- ``traps.off_policy``: ``bin_width_chars``, ``bin_centers``, ``teacher_prefixes`` / ``student_prefixes``
  {``n_positions``, ``forward_kl``, ``reverse_kl``, ``teacher_entropy`` (means), ``*_by_prefix`` (per bin),
  ``teacher_entropy_slope``}, ``reverse_kl_ratio`` (student / teacher prefixes), ``entropy_increase``, ``flag``,
  ``why``;
- ``traps.gap``: ``seq_loglik_gap`` (nats/sequence), ``seq_loglik_gap_per_char``, ``teacher_loglik_per_char``,
  ``student_loglik_per_char``, ``aligned_reverse_kl_per_span``, ``aligned_reverse_kl_per_seq``,
  ``n_aligned_spans``, ``teacher_accuracy``, ``student_accuracy``, ``accuracy_gap``, ``flag``, ``why``;
- ``traps.wrong_trace``: ``student`` / ``teacher`` {``n_pairs``, ``prefers_wrong`` (share of pairs),
  ``margin_per_char`` (log p(wrong) − log p(correct), nats/char)}, ``flag``, ``why``;
- ``symptoms.overconfidence``: ``method``, ``n``, ``accuracy``, ``ece``, ``mean_confidence``,
  ``mean_confidence_wrong``, ``mean_confidence_right``, ``overconfident_wrong_rate``, ``reliability``
  {lo, hi, confidence, accuracy, count per bin}, ``flag``, ``why``;
- ``symptoms.self_correction``: ``n``, ``recovery_rate``, ``clean_rate``, ``ratio``, ``examples``, ``flag``, ``why``;
- ``symptoms.degradation``: ``greedy`` and ``sampled`` {``n``, ``loop_rate``, ``truncation_rate``,
  ``distinct_1``, ``distinct_2``, ``distinct_char_4``, ``repeated_4gram_rate``, ``mean_chars``,
  ``loop_examples``}, ``flag``, ``why``.

Metrics (gauges, ``dguard_diag_*`` labelled run/stage): tail share at ``thresholds.tail_share_k``, teacher tail
mass, reverse-KL ratio, entropy increase, log-likelihood gap, accuracies, ECE, loop rate, recovery rate,
wrong-trace preference, and the number of flags.

Over 500 lines: the stage's Config, its up-front checks, the measurement steps and the report schema, read together.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.base.generate import generate_tokens
from dg_core.config import StageConfig, option
from dg_core.data import load_split, task_of, with_task_budget
from dg_core.errors import DGError
from dg_core.metrics import StageMetrics
from dg_core.models import load_model, model_info
from dg_core.models.limits import check_generation_fits, check_scoring_fits
from dg_core.store import output_uri
from dg_core.traps import measures, symptoms
from dg_core.utils import json_safe, seed_everything, set_threads_from_env

log = logging.getLogger(__name__)
SCHEMA = "dg.diagnose/v1"
REPORT_JSON, REPORT_HTML, SUMMARY_TXT = "report.json", "report.html", "summary.txt"


@dataclass
class Thresholds(StageConfig):
    """When a measure counts as a trap or a symptom (defaults are conservative; tune per task family)."""

    tail_mass_k: int = option(5, "k for the teacher's mass outside its own top-k.", ge=1)
    tail_mass: float = option(0.2, "Tail noise if the teacher's mean mass outside top-k exceeds this.", ge=0, le=1)
    tail_share_k: int = option(20, "k for the share of forward KL coming from outside the top-k.", ge=1)
    tail_share: float = option(0.5, "Tail noise if more than this share of forward KL is outside top-k ...", ge=0, le=1)
    min_tail_kl: float = option(0.05, "... and that tail part is at least this many nats per position.", ge=0)
    offpolicy_ratio: float = option(
        2.0, "Off-policy instability if reverse KL on student prefixes is this x larger.", gt=0
    )
    entropy_increase: float = option(
        0.5, "... or the teacher's entropy rises this many nats on student prefixes.", ge=0
    )
    accuracy_gap: float = option(0.2, "Teacher-student gap if teacher minus student accuracy exceeds this.")
    loglik_gap: float = option(0.5, "... or teacher samples are this many nats/char less likely under the student.")
    prefers_wrong: float = option(
        0.5, "Wrong-trace preference if the student prefers wrong traces more often than this.", ge=0, le=1
    )
    ece: float = option(0.15, "Overconfidence if ECE exceeds this ...", ge=0, le=1)
    confidence_wrong: float = option(0.5, "... and mean confidence on wrong answers exceeds this.", ge=0, le=1)
    loop_rate: float = option(
        0.2, "Decoding degradation if more than this share of responses end in a loop ...", ge=0, le=1
    )
    truncation_rate: float = option(0.5, "... or more than this share run to the length limit.", ge=0, le=1)
    recovery_ratio: float = option(0.5, "Self-correction collapse if recovery/clean accuracy falls below this.", ge=0)


@dataclass
class Config(StageConfig):
    teacher: str = option("", "Teacher model reference (store URI, local dir, zoo:<name>).")
    student: str = option("", "Student or proxy model reference; may use another tokenizer than the teacher.")
    dataset: str = option("", "Prepared dataset URI (written by `dguard prep`).")
    split: str = option("test", "Split to diagnose on.")
    n_examples: int = option(32, "Examples to use (the first N of the split).", ge=1)
    n_samples: int = option(2, "Sampled responses per prompt from each model.", ge=1)
    temperature: float = option(1.0, "Sampling temperature for teacher/student samples.", gt=0)
    max_new_tokens: int = option(
        0,
        "Teacher's response token budget (0: the task's own budget, e.g. 512 for math, 64 for the zoo's arithmetic).",
        ge=0,
    )
    student_max_new_tokens: int = option(
        0, "Student's response token budget (0: max_new_tokens); another tokenizer may need more tokens.", ge=0
    )

    def student_budget(self) -> int:
        return self.student_max_new_tokens or self.max_new_tokens

    batch_size: int = option(16, "Sequences per batch (generation and scoring).", ge=1)
    ks: list[int] = option([1, 5, 20, 100], "Top-k cut-offs for the head/tail split (the full vocabulary is added).")
    n_frequent: int = option(50, "Size of the 'frequent/function token' class (most frequent shared tokens).", ge=0)
    confidence: str = option(
        "consistency",
        "Student confidence: agreement of samples, or mean token probability.",
        choices=("consistency", "token"),
    )
    confidence_samples: int = option(4, "Samples per prompt for consistency confidence.", ge=1)
    n_bins: int = option(8, "Prefix-length bins for the off-policy curves.", ge=1)
    thresholds: Thresholds = option(default_factory=Thresholds, help="When measures count as traps/symptoms.")
    seed: int = option(0, "Sampling seed.")
    device: str = option("auto", "auto, cpu or cuda.")
    output: str = option("", "Where to publish the reports (default: <store root>/diagnose/<config hash>).")

    def check(self) -> None:
        for name in ("teacher", "student", "dataset"):
            if not getattr(self, name):
                raise DGError(
                    f"config field '{name}' is required: expected a {'dataset URI' if name == 'dataset' else 'model reference'}"
                )
        if any(k < 1 for k in self.ks):
            raise DGError(f"config field 'ks': got {self.ks}, expected integers >= 1")


# ----------------------------------------------------------------------------------------------- helpers
def _flag(cond_why: list[str]) -> dict[str, Any]:
    return {"flag": bool(cond_why), "why": "; ".join(cond_why)}


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def summary_line(report: dict[str, Any]) -> tuple[str, str]:
    """(verdict, one line): distillability from the number of traps flagged, then the headline figures."""
    traps = [n for n, v in report["traps"].items() if v.get("flag")]
    syms = [n for n, v in report["symptoms"].items() if v.get("flag")]
    verdict = "high" if not traps else ("medium" if len(traps) == 1 else "low")
    g, t, o = report["traps"]["gap"], report["traps"]["tail_noise"], report["traps"]["off_policy"]
    k = report["config"]["thresholds"]["tail_share_k"]
    share = next((r["tail_share"] for r in t["forward"]["per_k"] if r["k"] == k), None)
    line = (
        f"distillability {verdict.upper()}: traps [{', '.join(traps) or 'none'}], student symptoms "
        f"[{', '.join(syms) or 'none'}]; accuracy teacher {_fmt(g['teacher_accuracy'])} / student "
        f"{_fmt(g['student_accuracy'])}; gap {_fmt(g.get('seq_loglik_gap_per_char'))} nats/char; "
        f"fwd-KL tail share@{k} {_fmt(share, '.0%')}; rev-KL on/off-policy {_fmt(o.get('reverse_kl_ratio'), '.1f')}x"
    )
    return verdict, line


# ----------------------------------------------------------------------------------------------- the work
def diagnose(cfg: Config, teacher, t_tok, student, s_tok, task, examples) -> dict[str, Any]:
    """Measure everything on loaded models and examples; returns the report dict (no publishing)."""
    import dataclasses

    from tqdm import tqdm

    if cfg.max_new_tokens == 0:  # 0: the task's own budget
        cfg = dataclasses.replace(cfg, max_new_tokens=task.max_new_tokens)

    th = cfg.thresholds
    ks = sorted(set(cfg.ks)) + [None]
    bs = cfg.batch_size
    steps = tqdm(total=7, desc="diagnose", unit="step", leave=False)

    def done(what: str) -> None:
        log.info("diagnose: %s", what)
        steps.update(1)

    t_prompts = [task.prompt(e, t_tok) for e in examples]
    s_prompts = [task.prompt(e, s_tok) for e in examples]
    gen = dict(max_new_tokens=cfg.max_new_tokens, batch_size=bs)
    gen_s = dict(max_new_tokens=cfg.student_budget(), batch_size=bs)  # the student's own budget
    t_greedy = symptoms.answer(teacher, t_tok, task, examples, seed=cfg.seed, **gen)
    s_greedy = symptoms.answer(student, s_tok, task, examples, seed=cfg.seed, **gen_s)
    t_acc = sum(t_greedy.correct) / len(examples)
    s_acc = sum(s_greedy.correct) / len(examples)
    done(f"greedy accuracy teacher {t_acc:.3f} student {s_acc:.3f}")

    sample = dict(n=cfg.n_samples, temperature=cfg.temperature, seed=cfg.seed, batch_size=bs)
    t_ro = generate_tokens(teacher, t_tok, t_prompts, max_new_tokens=cfg.max_new_tokens, **sample)
    s_ro = generate_tokens(student, s_tok, s_prompts, max_new_tokens=cfg.student_budget(), **sample)
    flat_t = [t_prompts[i] for i in t_ro.prompt_index]
    flat_s = [s_prompts[i] for i in s_ro.prompt_index]
    done(f"sampled {len(t_ro.texts)} teacher and {len(s_ro.texts)} student responses")

    shared = measures.shared_vocab(t_tok, s_tok)
    class_texts = [e.reference for e in examples if e.reference] + [e.prompt for e in examples]
    token_class = measures.frequent_class(shared, class_texts, t_tok, cfg.n_frequent)
    common = dict(token_class=token_class, ks=ks, batch_size=bs)
    on_t = measures.compare_positions(
        teacher,
        t_tok,
        student,
        s_tok,
        flat_t,
        t_ro.texts,
        shared,
        finished=t_ro.finished,
        student_prompts=[s_prompts[i] for i in t_ro.prompt_index],
        **common,
    )
    on_s = measures.compare_positions(
        teacher,
        t_tok,
        student,
        s_tok,
        [t_prompts[i] for i in s_ro.prompt_index],
        s_ro.texts,
        shared,
        finished=s_ro.finished,
        student_prompts=flat_s,
        **common,
    )
    done(f"compared {on_t.n} + {on_s.n} matched positions over {shared.size} shared outcomes")

    tail = measures.tail_noise(
        on_t,
        k_mass=th.tail_mass_k,
        mass_threshold=th.tail_mass,
        share_k=th.tail_share_k,
        share_threshold=th.tail_share,
        min_tail_kl=th.min_tail_kl,
    )
    offp = measures.off_policy(
        on_t, on_s, n_bins=cfg.n_bins, ratio_threshold=th.offpolicy_ratio, entropy_threshold=th.entropy_increase
    )
    gap = measures.gap(
        teacher,
        t_tok,
        student,
        s_tok,
        (flat_t, t_ro.texts),
        ([t_prompts[i] for i in s_ro.prompt_index], s_ro.texts),
        teacher_accuracy=t_acc,
        student_accuracy=s_acc,
        student_prompts=[s_prompts[i] for i in t_ro.prompt_index],
        batch_size=bs,
        accuracy_threshold=th.accuracy_gap,
        loglik_threshold=th.loglik_gap,
    )
    done("trap measures")

    extra_t, extra_s = [], []
    scores = task.score_batch([examples[i] for i in t_ro.prompt_index], t_ro.texts)
    for i, e in enumerate(examples):
        rows = [(t_ro.texts[j], scores[j].correct) for j in range(len(t_ro.texts)) if t_ro.prompt_index[j] == i]
        good = next((r for r, c in rows if c and r), None)
        bad = next((r for r, c in rows if not c and r), None)
        if good is not None and bad is not None:
            extra_t.append((e, good, bad))
            extra_s.append((e, good, bad))
    wt_s = symptoms.wrong_trace_preference(student, s_tok, task, examples, batch_size=bs, extra_pairs=extra_s)
    wt_t = symptoms.wrong_trace_preference(teacher, t_tok, task, examples, batch_size=bs, extra_pairs=extra_t)
    why = []
    if wt_s["prefers_wrong"] is not None and wt_s["prefers_wrong"] > th.prefers_wrong:
        why.append(f"student prefers the wrong trace in {wt_s['prefers_wrong']:.0%} of pairs")
    wrong = {"student": wt_s, "teacher": wt_t, **_flag(why)}
    done("wrong-trace preference")

    conf = symptoms.overconfidence(
        student,
        s_tok,
        task,
        examples,
        s_greedy,
        method=cfg.confidence,
        n_samples=cfg.confidence_samples,
        temperature=cfg.temperature,
        seed=cfg.seed,
        **gen_s,
    )
    why = []
    if conf["ece"] > th.ece and (conf["mean_confidence_wrong"] or 0.0) > th.confidence_wrong:
        why.append(f"ECE {conf['ece']:.2f} with mean confidence {conf['mean_confidence_wrong']:.2f} on wrong answers")
    conf.update(_flag(why))
    corr = symptoms.self_correction(student, s_tok, task, examples, seed=cfg.seed, **gen_s)
    why = []
    if corr["ratio"] is not None and corr["ratio"] < th.recovery_ratio:
        why.append(f"recovers {corr['recovery_rate']:.0%} after a wrong step vs {corr['clean_rate']:.0%} clean")
    corr.update(_flag(why))
    done("overconfidence and self-correction")

    deg_g = symptoms.degradation(s_greedy.texts, s_greedy.finished)
    deg_s = symptoms.degradation(s_ro.texts, s_ro.finished)
    why = []
    if deg_g["loop_rate"] > th.loop_rate:
        why.append(f"{deg_g['loop_rate']:.0%} of greedy responses end in a loop")
    if (deg_g["truncation_rate"] or 0.0) > th.truncation_rate:
        why.append(f"{deg_g['truncation_rate']:.0%} of greedy responses hit the length limit")
    deg = {
        "greedy": deg_g,
        "sampled": deg_s,
        "teacher_greedy": symptoms.degradation(t_greedy.texts, t_greedy.finished),
        **_flag(why),
    }
    done("decoding degradation")
    steps.close()

    report = {
        "schema": SCHEMA,
        "config": cfg.to_dict(),
        "vocab": {**shared.to_dict(), "n_class": int(token_class.sum())},
        "traps": {"tail_noise": tail, "off_policy": offp, "gap": gap, "wrong_trace": wrong},
        "symptoms": {"overconfidence": conf, "self_correction": corr, "degradation": deg},
        "samples": {
            "teacher": [{"prompt": p, "response": r} for p, r in zip(flat_t[:4], t_ro.texts[:4])],
            "student": [{"prompt": p, "response": r} for p, r in zip(flat_s[:4], s_ro.texts[:4])],
        },
    }
    report["flags"] = [n for sec in ("traps", "symptoms") for n, v in report[sec].items() if v.get("flag")]
    report["distillability"], report["summary"] = summary_line(report)
    return json_safe(report)


# ----------------------------------------------------------------------------------------------- HTML
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: dict[str, Any]) -> dict[str, str]:
    """The report's figures as base64 PNGs: KL head/tail vs k, KL and entropy vs prefix, calibration diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    tail = report["traps"]["tail_noise"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, kind in zip(axes, ("forward", "reverse")):
        rows = tail[kind]["per_k"]
        xs = list(range(len(rows)))
        ax.bar([x - 0.2 for x in xs], [r["head"] for r in rows], width=0.4, label="head (top-k)", color="#4878cf")
        ax.bar([x + 0.2 for x in xs], [r["tail"] for r in rows], width=0.4, label="tail", color="#d65f5f")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(xs, [str(r["k"]) for r in rows])
        ax.set_title(f"{kind} KL split at the teacher's top-k")
        ax.set_xlabel("k (teacher's top-k tokens)")
        # A part of a KL sum is not a divergence: terms p*log(p/q) are < 0 where the student rates a token higher
        # than the teacher, so the head at k=1 (or the tail) can be negative; head + tail is the KL, >= 0.
        ax.set_ylabel("contribution to KL (nats, summed)")
        ax.legend(fontsize=8)
    out["head_tail"] = _png(fig)

    op = report["traps"]["off_policy"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, style in (("teacher_prefixes", "o-"), ("student_prefixes", "s--")):
        d = op[name]
        xs = op["bin_centers"]
        for ax, key in zip(axes, ("reverse_kl_by_prefix", "teacher_entropy_by_prefix")):
            pts = [(x, y) for x, y in zip(xs, d[key]) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name.replace("_", " "))
    axes[0].set_title("reverse KL vs prefix length")
    axes[1].set_title("teacher entropy vs prefix length")
    for ax, yl in zip(axes, ("reverse KL (nats)", "entropy (nats)")):
        ax.set_xlabel("response characters before the position")
        ax.set_ylabel(yl)
        ax.legend(fontsize=8)
    out["prefix"] = _png(fig)

    rel = report["symptoms"]["overconfidence"]["reliability"]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    ax.bar(
        [(lo + hi) / 2 for lo, hi in zip(rel["lo"], rel["hi"])],
        rel["accuracy"],
        width=[hi - lo for lo, hi in zip(rel["lo"], rel["hi"])],
        alpha=0.6,
        edgecolor="k",
        label="accuracy",
    )
    ax.plot(rel["confidence"], rel["accuracy"], "o", color="#d65f5f", label="bin (confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("student confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"calibration (ECE {_fmt(report['symptoms']['overconfidence']['ece'])})")
    ax.legend(fontsize=7)
    out["calibration"] = _png(fig)
    return out


def _rows(d: dict[str, Any], skip: tuple[str, ...] = (), head: tuple[str, str] = ("measure", "value")) -> str:
    cells = []
    for k, v in d.items():
        if k in skip or isinstance(v, (dict, list)):
            continue
        val = _fmt(v, ".4g") if isinstance(v, float) else html.escape(str(v))
        cells.append(f"<tr><td>{html.escape(k)}</td><td>{val}</td></tr>")
    th = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>" + "".join(cells) + "</tbody></table>"


def _head_tail_table(tail: dict[str, Any]) -> str:
    """Per k: the head and tail parts of forward and reverse KL and the tail's share (a part may be < 0)."""
    e = html.escape
    head = ["k", "forward KL: head", "forward KL: tail", "forward tail share", "reverse KL: head", "reverse KL: tail"]
    rows = []
    for f, r in zip(tail["forward"]["per_k"], tail["reverse"]["per_k"]):
        cells = [f["k"], f.get("head"), f.get("tail"), f.get("tail_share"), r.get("head"), r.get("tail")]
        rows.append(
            "<tr>"
            + "".join(f"<td>{_fmt(c, '.4g') if isinstance(c, float) else e(str(c))}</td>" for c in cells)
            + "</tr>"
        )
    th = "".join(f"<th scope='col'>{e(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(report: dict[str, Any], figures: dict[str, str]) -> str:
    """A self-contained HTML page: summary, flags with reasons, headline tables and the plots."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>distillation trap diagnosis</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;"
        "margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}th{background:#f0f0f0}.flag{color:#b00}.ok{color:#070}</style></head><body>",
        "<h1>Distillation trap diagnosis</h1>",
        f"<p><b>{e(report['summary'])}</b></p>",
        f"<p>teacher <code>{e(str(report['teacher']['ref']))}</code> &middot; student "
        f"<code>{e(str(report['student']['ref']))}</code> &middot; dataset <code>{e(str(report['dataset']['uri']))}"
        f"</code> ({e(str(report['dataset']['split']))}, n={report['dataset']['n']})</p>",
    ]
    for sec in ("traps", "symptoms"):
        parts.append(f"<h2>{sec}</h2><ul>")
        for name, v in report[sec].items():
            cls, word = ("flag", "FLAGGED") if v.get("flag") else ("ok", "ok")
            parts.append(f"<li><b>{e(name)}</b>: <span class='{cls}'>{word}</span> {e(v.get('why') or '')}</li>")
        parts.append("</ul>")
    parts.append("<h2>Tail noise: where the KL signal sits</h2>")
    parts.append(f"<img alt='KL head and tail by k' src='data:image/png;base64,{figures['head_tail']}'>")
    parts.append(
        "<p>Each bar is a <i>part</i> of one divergence: the KL summed over the teacher's top-k tokens (head) and "
        "over the rest (tail). A part is not itself a divergence: its terms p&middot;log(p/q) are negative where "
        "the student gives a token more probability than the teacher, so a bar can go below zero (typically the "
        "head at k=1). Head + tail is the full KL, which is never negative.</p>"
    )
    parts.append(_head_tail_table(report["traps"]["tail_noise"]))
    parts.append(_rows(report["traps"]["tail_noise"]["teacher_tail_mass"], head=("top-k", "teacher tail mass")))
    parts.append("<h2>Off-policy instability</h2>")
    parts.append(f"<img alt='reverse KL and entropy by prefix' src='data:image/png;base64,{figures['prefix']}'>")
    parts.append(_rows(report["traps"]["off_policy"]))
    parts.append("<h2>Teacher–student gap</h2>" + _rows(report["traps"]["gap"]))
    wt = report["traps"]["wrong_trace"]
    parts.append(
        "<h2>Wrong-trace preference</h2><p>student</p>" + _rows(wt["student"]) + "<p>teacher</p>" + _rows(wt["teacher"])
    )
    parts.append("<h2>Student symptoms</h2>")
    parts.append(f"<img alt='student calibration' src='data:image/png;base64,{figures['calibration']}'>")
    parts.append(_rows(report["symptoms"]["overconfidence"]))
    parts.append("<p>self-correction</p>" + _rows(report["symptoms"]["self_correction"]))
    parts.append("<p>decoding degradation (greedy)</p>" + _rows(report["symptoms"]["degradation"]["greedy"]))
    parts.append("<h2>Samples</h2>")
    for who in ("teacher", "student"):
        for s in report["samples"][who]:
            parts.append(f"<p>{who}: <code>{e(s['prompt'])}</code> &rarr; <code>{e(s['response'])}</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- metrics
def push_metrics(report: dict[str, Any], metrics) -> None:
    """Headline gauges of a report onto a :class:`dg_core.metrics.StageMetrics`."""
    t, s = report["traps"], report["symptoms"]
    k = report["config"]["thresholds"]["tail_share_k"]
    share = next((r["tail_share"] for r in t["tail_noise"]["forward"]["per_k"] if r["k"] == k), None)
    mass = t["tail_noise"]["teacher_tail_mass"].get(str(report["config"]["thresholds"]["tail_mass_k"]))
    values = {
        "diag_tail_share": share,
        "diag_teacher_tail_mass": mass,
        "diag_reverse_kl_ratio": t["off_policy"]["reverse_kl_ratio"],
        "diag_entropy_increase": t["off_policy"]["entropy_increase"],
        "diag_loglik_gap_per_char": t["gap"]["seq_loglik_gap_per_char"],
        "diag_teacher_accuracy": t["gap"]["teacher_accuracy"],
        "diag_student_accuracy": t["gap"]["student_accuracy"],
        "diag_student_prefers_wrong": t["wrong_trace"]["student"]["prefers_wrong"],
        "diag_student_ece": s["overconfidence"]["ece"],
        "diag_student_loop_rate": s["degradation"]["greedy"]["loop_rate"],
        "diag_student_recovery_rate": s["self_correction"]["recovery_rate"],
        "diag_flags": float(len(report["flags"])),
    }
    for name, v in values.items():
        if v is not None:
            metrics.set(name, float(v))


# ----------------------------------------------------------------------------------------------- stage
def check_lengths(cfg: Config, teacher, t_tok, student, s_tok, task, examples) -> None:
    """Before any generation: each model generates within its context, and each can score the other's samples
    (the student scores the teacher's responses and the teacher the student's)."""

    t_prompts = [task.prompt(e, t_tok) for e in examples]
    s_prompts = [task.prompt(e, s_tok) for e in examples]
    texts = [e.reference for e in examples if e.reference] + [e.prompt for e in examples]
    check_generation_fits(teacher, t_tok, t_prompts, cfg.max_new_tokens, name=cfg.teacher, role="teacher")
    check_generation_fits(student, s_tok, s_prompts, cfg.student_budget(), name=cfg.student, role="student")
    check_scoring_fits(
        student,
        s_tok,
        s_prompts,
        t_tok,
        cfg.max_new_tokens,
        texts,
        name=cfg.student,
        source=cfg.teacher,
        role="student",
    )
    check_scoring_fits(
        teacher,
        t_tok,
        t_prompts,
        s_tok,
        cfg.student_budget(),
        texts,
        name=cfg.teacher,
        source=cfg.student,
        role="teacher",
    )


def run(cfg: Config) -> dict:
    """Diagnose, then publish report.json + report.html + summary.txt; returns the summary and URIs."""

    cfg = with_task_budget(cfg)
    set_threads_from_env()
    seed_everything(cfg.seed)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("output", "device")}
    out = cfg.output or output_uri("diagnose", params)
    task = task_of(cfg.dataset)
    examples = load_split(cfg.dataset, cfg.split)[: cfg.n_examples]
    if not examples:
        raise DGError(f"{cfg.dataset}: split {cfg.split!r} is empty, expected examples to diagnose on")
    teacher, t_tok = load_model(cfg.teacher, device=cfg.device)
    student, s_tok = load_model(cfg.student, device=cfg.device)
    check_lengths(cfg, teacher, t_tok, student, s_tok, task, examples)
    with StageMetrics("diagnose") as metrics:
        report = diagnose(cfg, teacher, t_tok, student, s_tok, task, examples)
        report["teacher"] = {"ref": cfg.teacher, "vocab": len(t_tok), **json_safe(model_info(teacher))}
        report["student"] = {"ref": cfg.student, "vocab": len(s_tok), **json_safe(model_info(student))}
        report["dataset"] = {"uri": cfg.dataset, "split": cfg.split, "task": task.spec(), "n": len(examples)}
        page = render_html(report, plots(report))
        with tempfile.TemporaryDirectory(prefix="dg-diagnose-") as tmp:
            Path(tmp, REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
            Path(tmp, REPORT_HTML).write_text(page, encoding="utf-8")
            Path(tmp, SUMMARY_TXT).write_text(report["summary"] + "\n")
            store.publish(
                tmp,
                out,
                metadata={
                    "kind": "diagnosis",
                    "schema": SCHEMA,
                    "distillability": report["distillability"],
                    "flags": report["flags"],
                },
            )
        push_metrics(report, metrics)
    log.info("%s", report["summary"])
    return {
        "report": out,
        "report_json": store.join(out, REPORT_JSON),
        "report_html": store.join(out, REPORT_HTML),
        "summary": report["summary"],
        "distillability": report["distillability"],
        "flags": report["flags"],
        "teacher_accuracy": report["traps"]["gap"]["teacher_accuracy"],
        "student_accuracy": report["traps"]["gap"]["student_accuracy"],
    }
