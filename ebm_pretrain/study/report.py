"""The report: from ``OUT/cells/*.json`` and ``OUT/grid.json`` alone, and the same
bytes every time, ``OUT/table.md`` (top-1 per method and evaluation, the
pretraining runs, the claims), ``OUT/claims.md`` and the plots of ``plots.py``.

Spread and verdicts: each number is the mean over seeds ± the sample standard
deviation. A claim "A beats B" holds on an evaluation when mean(A) − mean(B)
exceeds twice its standard error (√(s_A²/n_A + s_B²/n_B)); "A matches B" when it
is not below minus twice that. A method run with one seed takes the pooled
seed-to-seed deviation of that evaluation (over the methods with several).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ebm_pretrain.study import cost as study_cost
from ebm_pretrain.study import plots

VERDICT_SE = 2.0  # standard errors a difference must clear


def records(out: str) -> list[dict]:
  folder = os.path.join(out, "cells")
  return [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
          if f.endswith(".json")]


def read_grid(out: str) -> dict:
  path = os.path.join(out, "grid.json")
  return json.load(open(path)) if os.path.exists(path) else {}


def headline(record: dict) -> float | None:
  """The number a cell is judged by: top-1 of an evaluation; none for a pretraining."""
  m = record["metrics"]
  kind = record["cell"]["kind"]
  if kind == "finetune":
    return m.get("eval/top1")
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


def pooled_std(by_method: dict[str, list[float]]) -> float:
  """The seed-to-seed standard deviation pooled over the methods with 2+ seeds (nan if none)."""
  groups = [v for v in by_method.values() if len(v) > 1]
  dof = sum(len(v) - 1 for v in groups)
  if not dof:
    return math.nan
  return math.sqrt(sum((len(v) - 1) * np.var(v, ddof=1) for v in groups) / dof)


def _fmt(values: list[float]) -> str:
  mean = 100 * float(np.mean(values))
  if len(values) == 1:
    return f"{mean:.2f} (1 seed)"
  return f"{mean:.2f} ± {100 * float(np.std(values, ddof=1)):.2f} ({len(values)} seeds)"


def compare(a: list[float], b: list[float], pooled: float, kind: str) -> tuple[float, float, str]:
  """(mean(a) − mean(b), its standard error, verdict) in top-1 points."""
  std = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else pooled
  diff = 100 * (float(np.mean(a)) - float(np.mean(b)))
  se = 100 * math.sqrt(std(a) ** 2 / len(a) + std(b) ** 2 / len(b))
  if math.isnan(se):
    return diff, se, "no spread yet"
  if kind == "beats":
    verdict = ("holds" if diff > VERDICT_SE * se else
               "reversed" if diff < -VERDICT_SE * se else "within noise")
  else:
    verdict = "holds" if diff >= -VERDICT_SE * se else "reversed"
  return diff, se, verdict


def claims_table(s: dict, evals: list[str], claims: list[dict]) -> str:
  """One row per comparison of the grid's ``claims``: the difference ± its standard
  error and the verdict on each evaluation, and overall."""
  if not claims:
    return ""
  lines = ["| paper's claim | comparison | " + " | ".join(evals) + " | at this scale |",
           "| --- | --- |" + " --- |" * len(evals) + " --- |"]
  for c in claims:
    for b in c["than"]:
      cells, verdicts = [], []
      for e in evals:
        if c["method"] not in s[e] or b not in s[e]:
          cells.append("-")
          continue
        diff, se, verdict = compare(s[e][c["method"]], s[e][b], pooled_std(s[e]), c["kind"])
        cells.append(f"{diff:+.2f} ± {se:.2f} {verdict}")
        verdicts.append(verdict)
      held = sum(v == "holds" for v in verdicts)
      overall = ("not measured" if not verdicts else
                 "holds" if held == len(verdicts) else
                 "does not hold" if held == 0 else f"partly ({held} of {len(verdicts)})")
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


def report(out: str, readme: str | None = None) -> str:
  """Writes OUT/table.md, OUT/claims.md and the plots from OUT alone; returns the
  table. With ``readme``, also replaces that file's results and claims blocks
  (the top-1 table and the claims, between ``<!-- results:begin -->`` and
  ``<!-- results:end -->``, ``<!-- claims:begin -->`` and ``<!-- claims:end -->``)."""
  rows, grid = records(out), read_grid(out)
  s = summary(rows)
  evals = sorted(s)
  # Evaluations restricted to some methods (a learning-rate search), and diagnostics,
  # get tables of their own and are not evidence for the claims.
  spec = lambda e: grid.get("evals", {}).get(e, {})
  diagnostics = [e for e in evals if spec(e).get("diagnostic")]
  searches = [e for e in evals if spec(e).get("methods") and e not in diagnostics]
  main_evals = [e for e in evals if e not in searches and e not in diagnostics]
  methods = sorted({m for ms in s.values() for m in ms})
  split = sorted({r["config"]["data"]["eval_split"] for r in rows
                  if r["cell"]["kind"] != "pretrain"})
  lines = [f"Top-1 (%) on the `{', '.join(split)}` split: mean ± std over seeds.", ""]
  lines += _top1_lines(s, main_evals, methods)
  if searches:
    lines += ["", "Learning-rate search (the fine-tuning lr scaled; top-1 %):", ""]
    lines += _top1_lines(s, searches, [m for m in methods if any(m in s[e] for e in searches)])
  if diagnostics:
    lines += ["", "Frozen-feature diagnostics (which features kNN and the probe read; "
              "top-1 %):", ""]
    lines += _top1_lines(s, diagnostics,
                         [m for m in methods if any(m in s[e] for e in diagnostics)])
  top1_table = "\n".join(lines) + "\n"
  pre = sorted((r for r in rows if r["cell"]["kind"] == "pretrain"),
               key=lambda r: (r["cell"]["method"], r["seed"]))
  cost = study_cost.load(out)
  if pre:
    lines += ["", "| pretraining | objective | N | epochs | seed | wall (min) | img/s (median) "
              "| step (ms, cost.json) | time (min) | final loss |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in pre:
      c = cost.get(r["cell"]["method"])
      step_ms = f"{1000 * c['step_s']:.0f}" if c else "-"
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
  claims = claims_table(s, main_evals, grid.get("claims", []))
  if claims:
    lines += ["", "Claims (difference in top-1 points ± its standard error; the verdict rule "
              "is in `ebm_pretrain/study/report.py`):", "", claims.rstrip()]
  table = "\n".join(lines) + "\n"
  _write(os.path.join(out, "table.md"), table)
  _write(os.path.join(out, "claims.md"), claims)
  plots.top1(s, main_evals, methods, os.path.join(out, "top1.png"))
  plots.psnr_per_step(pre, os.path.join(out, "psnr_steps.png"))
  plots.top1_vs_n(s, main_evals, grid.get("n_sweep", {}), os.path.join(out, "top1_vs_n.png"))
  plots.top1_vs_wall(s, main_evals, pre, cost, os.path.join(out, "top1_vs_wall.png"))
  if readme:
    _replace_blocks(readme, {"results": top1_table, "claims": claims})
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
