"""The report: from ``OUT/cells/*.json`` and ``OUT/grid.json`` alone, and the same
bytes every time, ``OUT/table.md`` (top-1 per method and evaluation, the
pretraining runs, the claims), ``OUT/claims.md`` and the plots of ``plots.py``.

Spread and verdicts (``stats.py``): each number is the mean over seeds ± the
sample standard deviation. A claim compares two methods on each of its
evaluations; a method with fewer than ``MIN_SEEDS`` seeds "needs seeds" (no
spread is borrowed from other methods). "A beats B": Welch's two-sided t-test;
it holds when mean(A) > mean(B) at Holm-adjusted p < ``ALPHA``, is reversed when
mean(A) < mean(B) at that level, and is "not shown" otherwise. "A matches or
beats B": a one-sided non-inferiority test with a margin of ``MARGIN`` points
(H1: mean(A) − mean(B) > −MARGIN); it holds at Holm-adjusted p < ``ALPHA``, is
reversed when the whole 95% interval lies below −MARGIN, and is "not shown"
otherwise. Holm–Bonferroni runs over the evaluations of one comparison.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ebm_pretrain.study import cost as study_cost
from ebm_pretrain.study import plots, stats

MIN_SEEDS = 3    # seeds each side of a comparison needs
ALPHA = 0.05     # the level, after Holm's adjustment
MARGIN = 0.5     # top-1 points: "matches" = not worse by this much
# A pretraining learning-rate search runs one seed per rate: another rate replaces
# x1 only when its mean over the evaluations is higher by more than this many
# points, more than one cell's seed-to-seed spread (docs/study.md).
SEARCH_TOLERANCE = 1.0


def records(out: str) -> list[dict]:
  folder = os.path.join(out, "cells")
  return [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
          if f.endswith(".json")]


def read_grid(out: str) -> dict:
  path = os.path.join(out, "grid.json")
  return json.load(open(path)) if os.path.exists(path) else {}


def old_bank(record: dict) -> bool:
  """Whether a holdout kNN or linear-probe cell predates the clean bank: its
  training bank was the whole training split, holdout images included, which
  lifts its number by a method-dependent amount. Such cells are not counted.
  (Fine-tunings always trained on the split without the holdout.) They are known
  by what they lack: the clean bank landed with the provenance fields, so every
  cell written since records ``dirty``."""
  return (record["cell"]["kind"] in ("knn", "linear_probe") and "dirty" not in record
          and record["config"]["data"]["eval_split"] == "holdout")


def headline(record: dict) -> float | None:
  """The number a cell is judged by: top-1 of an evaluation (a segmentation
  fine-tuning's mIoU); none for a pretraining."""
  m = record["metrics"]
  kind = record["cell"]["kind"]
  if kind == "finetune":
    return m.get("eval/top1", m.get("eval/miou"))
  if kind in ("knn", "linear_probe"):
    return m.get(f"eval/{record['cell']['eval']}_top1")
  return None


def summary(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
  """{eval: {method: [top-1 per seed, in seed order]}}."""
  out: dict[str, dict[str, list[tuple[int, float]]]] = {}
  for r in rows:
    v = headline(r)
    if v is not None:
      out.setdefault(r["cell"]["eval"], {}).setdefault(r["cell"]["method"], []).append(
          (r["seed"], float(v)))
  return {e: {m: [v for _, v in sorted(vs)] for m, vs in ms.items()} for e, ms in out.items()}


def _fmt(values: list[float]) -> str:
  mean = 100 * float(np.mean(values))
  if len(values) == 1:
    return f"{mean:.2f} (1 seed)"
  return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f} ({len(values)} seeds)"


def compare_row(a: dict[str, list[float]], b: dict[str, list[float]], kind: str) -> list[str]:
  """One comparison over the evaluations both methods have ({eval: top-1 per
  seed}): each cell the difference in points, its 95% interval, the
  Holm-adjusted p-value and the verdict."""
  evals = [e for e in a if e in b]
  short = [e for e in evals if min(len(a[e]), len(b[e])) < MIN_SEEDS]
  tests = {e: stats.welch([100 * v for v in a[e]], [100 * v for v in b[e]],
                          margin=MARGIN if kind != "beats" else None)
           for e in evals if e not in short}
  adjusted = dict(zip(tests, stats.holm([t.p for t in tests.values()])))
  out = {}
  for e in short:
    n = min(len(a[e]), len(b[e]))
    out[e] = f"needs seeds ({n} of {MIN_SEEDS})"
  for e, t in tests.items():
    p = adjusted[e]
    if kind == "beats":
      verdict = "not shown" if p >= ALPHA else "holds" if t.diff > 0 else "reversed"
    else:
      verdict = ("holds" if p < ALPHA else "reversed" if t.ci[1] < -MARGIN else "not shown")
    shown = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    out[e] = f"{t.diff:+.2f} [{t.ci[0]:+.2f}, {t.ci[1]:+.2f}] {shown} {verdict}"
  return [out.get(e, "-") for e in a]


CLAIMS_RULE = (
    f"Each cell: mean difference in top-1 points, its 95% interval [Welch], the p-value "
    f"adjusted by Holm–Bonferroni over the row's evaluations, the verdict at α = {ALPHA}. "
    f"\"A > B\": Welch's two-sided t-test. \"A ≥ B\" (matches or beats): a one-sided "
    f"non-inferiority test with a margin of {MARGIN} points; reversed when the whole "
    f"interval lies below −{MARGIN}. A method with fewer than {MIN_SEEDS} seeds needs seeds.")


def claims_table(s: dict, evals: list[str], claims: list[dict], miou=()) -> str:
  """One row per comparison of the grid's ``claims`` (``compare_row``'s cells), and
  its overall verdict; ``miou``: the evaluations whose points are mIoU, not top-1."""
  if not claims:
    return ""
  rule = CLAIMS_RULE
  if miou:
    rule += f" {', '.join(miou)}: mIoU points, not top-1."
  lines = [rule, "",
           "| paper's claim | comparison | " + " | ".join(evals) + " | at this scale |",
           "| --- | --- |" + " --- |" * len(evals) + " --- |"]
  for c in claims:
    for b in c["than"]:
      a_vals = {e: s[e][c["method"]] for e in evals if c["method"] in s[e] and b in s[e]}
      b_vals = {e: s[e][b] for e in a_vals}
      row = dict(zip(a_vals, compare_row(a_vals, b_vals, c["kind"])))
      cells = [row.get(e, "-") for e in evals]
      verdicts = [cell.rsplit(" ", 1)[-1] for cell in row.values()]
      held, rev, n = verdicts.count("holds"), verdicts.count("reversed"), len(verdicts)
      if not verdicts:
        overall = "not measured"
      elif any(v.startswith("needs seeds") for v in row.values()):
        overall = "needs seeds"
      elif held == n:
        overall = "holds"
      elif held:  # a significant reversal is named: "partly" alone reads as half a win
        overall = f"partly ({held} of {n}" + (f", {rev} reversed)" if rev else ")")
      else:
        overall = f"does not hold ({rev} of {n} reversed)" if rev else "does not hold"
      if verdicts and len(verdicts) < len(evals):  # (the rest await cells)
        overall += f"; {len(evals) - len(verdicts)} of {len(evals)} not measured"
      sign = ">" if c["kind"] == "beats" else "≥"
      lines.append(f"| {c['claim']} | {c['method']} {sign} {b} | " + " | ".join(cells)
                   + f" | {overall} |")
  return "\n".join(lines) + "\n"


def _top1_lines(s: dict, evals: list[str], methods: list[str]) -> list[str]:
  lines = ["| method | " + " | ".join(evals) + " |", "| --- |" + " --- |" * len(evals)]
  for m in methods:
    lines.append(f"| {m} | " + " | ".join(_fmt(s[e][m]) if m in s[e] else "-" for e in evals)
                 + " |")
  return lines


def lr_search_lines(s: dict, evals: list[str], search: dict, losses: dict) -> list[str]:
  """The pretraining learning-rate search ({name: {method, factor}}): each rate's
  final pretraining loss, top-1 on ``evals`` and their mean, and the rate kept per
  method (x1 unless another's mean beats it by more than ``SEARCH_TOLERANCE``;
  none until every rate has every evaluation)."""
  lines = ["| method | lr | final loss | " + " | ".join(evals) + " | mean | kept |",
           "| --- | --- | --- |" + " --- |" * len(evals) + " --- | --- |"]
  for method in sorted({v["method"] for v in search.values()}):
    rates = sorted((v["factor"], name) for name, v in search.items() if v["method"] == method)
    means = {f: 100 * float(np.mean([np.mean(s[e][n]) for e in evals]))
             for f, n in rates if all(n in s.get(e, {}) for e in evals)}
    kept = None
    if len(means) == len(rates) and 1.0 in means:
      best = max(means, key=means.get)
      kept = best if means[best] > means[1.0] + SEARCH_TOLERANCE else 1.0
    for f, n in rates:
      cells = [_fmt(s[e][n]) if n in s.get(e, {}) else "-" for e in evals]
      mean = f"{means[f]:.2f}" if f in means else "-"
      loss = f"{losses[n]:.4f}" if n in losses else "-"
      lines.append(f"| {method} | ×{f:g} | {loss} | " + " | ".join(cells)
                   + f" | {mean} | {'✓' if f == kept else ''} |")
  return lines


def report(out: str, readme: str | None = None) -> str:
  """Writes OUT/table.md, OUT/claims.md and the plots from OUT alone; returns the
  table. With ``readme``, also replaces that file's results and claims blocks
  (the top-1 table and the claims, between ``<!-- results:begin -->`` and
  ``<!-- results:end -->``, ``<!-- claims:begin -->`` and ``<!-- claims:end -->``;
  ``test_results`` and ``test_claims`` for cells evaluated on the test split)."""
  rows, grid = records(out), read_grid(out)
  stale = sorted({f"{r['cell']['method']}/s{r['seed']}" for r in rows if old_bank(r)})
  # (an evaluation whose every cell awaits its rerun keeps its column, empty)
  evals = sorted({r["cell"]["eval"] for r in rows if headline(r) is not None})
  rows = [r for r in rows if not old_bank(r)]
  s = {e: {} for e in evals} | summary(rows)
  # Evaluations restricted to some methods (a learning-rate search), and diagnostics,
  # get tables of their own and are not evidence for the claims.
  spec = lambda e: grid.get("evals", {}).get(e, {})
  diagnostics = [e for e in evals if spec(e).get("diagnostic")]
  searches = [e for e in evals if spec(e).get("methods") and e not in diagnostics]
  main_evals = [e for e in evals if e not in searches and e not in diagnostics]
  # The pretraining learning-rate search's runs: a table of their own, in no plot
  # or claim.
  search = grid.get("pretrain_lr_search", {})
  searched = {e: {m: v for m, v in ms.items() if m in search} for e, ms in s.items()}
  s = {e: {m: v for m, v in ms.items() if m not in search} for e, ms in s.items()}
  methods = sorted({m for ms in s.values() for m in ms})
  split = sorted({r["config"]["data"]["eval_split"] for r in rows
                  if r["cell"]["kind"] != "pretrain"})
  miou = sorted({r["cell"]["eval"] for r in rows if "eval/miou" in r["metrics"]
                 and "eval/top1" not in r["metrics"]})
  # A segmentation grid's columns are all mIoU: its caption says so, not "Top-1".
  top1 = [e for e in main_evals if e not in miou]
  lines = [f"{'Top-1' if top1 else 'mIoU'} (%) on the `{', '.join(split)}` split: mean ± std "
           "over seeds" + (f"; {', '.join(miou)}: mIoU (%)." if miou and top1 else "."), ""]
  lines += _top1_lines(s, main_evals, methods)
  if stale:
    lines += ["", "Not counted until rerun on the clean bank (their kNN and probe banks "
              f"held holdout images): {', '.join(stale)}."]
  if searches:
    lines += ["", "Learning-rate search (the fine-tuning lr scaled; top-1 %):", ""]
    lines += _top1_lines(s, searches, [m for m in methods if any(m in s[e] for e in searches)])
  if any(searched.values()):
    lines += ["", "Pretraining learning-rate search (seed 0; the pretraining lr scaled; "
              f"top-1 %; kept: ×1 unless another rate's mean is higher by more than "
              f"{SEARCH_TOLERANCE:g} point, one seed each):", ""]
    losses = {r["cell"]["method"]: r["metrics"].get("loss", float("nan")) for r in rows
              if r["cell"]["kind"] == "pretrain" and r["cell"]["method"] in search}
    lines += lr_search_lines(searched, main_evals, search, losses)
  if diagnostics:
    lines += ["", "Frozen-feature diagnostics (which features kNN and the probe read; "
              "top-1 %):", ""]
    lines += _top1_lines(s, diagnostics,
                         [m for m in methods if any(m in s[e] for e in diagnostics)])
  top1_table = "\n".join(lines) + "\n"
  pre = sorted((r for r in rows
                if r["cell"]["kind"] == "pretrain" and r["cell"]["method"] not in search),
               key=lambda r: (r["cell"]["method"], r["seed"]))
  cost = study_cost.with_same_steps(study_cost.load(out), pre)
  if pre:
    lines += ["", "| pretraining | objective | N | epochs | seed | wall (min) | img/s (median) "
              "| step (ms, cost.json) | time (min) | final loss |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in pre:
      c = cost.get(r["cell"]["method"])
      step_ms = f"{1000 * c['step_s']:.0f}" if c else "-"
      step_ms += f" ({c['same_step_as']}'s)" if c and "same_step_as" in c else ""
      lines.append(f"| {r['cell']['method']} | {r['config']['objective']} | "
                   f"{plots.inner_steps(r)} | {r['config']['total_epochs']:g} | {r['seed']} | "
                   f"{r['wall_s'] / 60:.1f} | {r['img_per_s'] or 0:.0f} | "
                   f"{step_ms} | "
                   f"{plots.pretraining_minutes(r, cost):.1f} | "
                   f"{r['metrics'].get('loss', float('nan')):.4f} |")
    missing = sorted({r["cell"]["method"] for r in pre} - set(cost))
    lines += ["", "Time: the run's steps × its method's step time measured in one process "
              "(`study cost`, cost.json)." if cost else
              "Time: the run's images over its median img/s (no cost.json: `study cost`)."]
    if cost and missing:  # (a method added to the grid after the cost was measured)
      lines[-1] += (f" Not in cost.json, so at their own median speed until `study cost` "
                    f"is rerun: {', '.join(missing)}.")
  claims = claims_table(s, main_evals, grid.get("claims", []), miou)
  if claims:
    lines += ["", "Claims:", "", claims.rstrip()]
  table = "\n".join(lines) + "\n"
  _write(os.path.join(out, "table.md"), table)
  _write(os.path.join(out, "claims.md"), claims)
  plots.top1(s, main_evals, methods, os.path.join(out, "top1.png"))
  plots.psnr_per_step(pre, os.path.join(out, "psnr_steps.png"))
  plots.top1_vs_n(s, main_evals, grid.get("n_sweep", {}), os.path.join(out, "top1_vs_n.png"))
  plots.top1_vs_wall(s, main_evals, pre, cost, os.path.join(out, "top1_vs_wall.png"),
                     curves=grid.get("compute_curves", {}))
  if readme:  # the blocks of the test split's report are test_results, test_claims
    prefix = "test_" if split == ["test"] else ""
    _replace_blocks(readme, {f"{prefix}results": top1_table, f"{prefix}claims": claims})
  return table


def _write(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def _replace_blocks(path: str, blocks: dict[str, str]) -> None:
  """Replaces the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
  for each block the file has (it must have one)."""
  doc = open(path).read()
  found = [name for name in blocks if f"<!-- {name}:begin -->" in doc]
  if not found:
    from ebm_pretrain.errors import ConfigError
    raise ConfigError(f"{path} has none of the blocks "
                      + ", ".join(f"<!-- {n}:begin --> ... <!-- {n}:end -->" for n in blocks))
  for name in found:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = doc.split(begin, 1)
    doc = head + begin + "\n" + blocks[name] + rest[rest.index(end):]
  _write(path, doc)
