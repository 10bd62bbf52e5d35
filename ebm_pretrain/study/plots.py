"""The report's figures (matplotlib, Agg), each written without a version stamp so
that the same cells give the same bytes. A figure with nothing to show is not
written (and an old one is removed)."""
from __future__ import annotations

import os

import numpy as np

# Families of objectives, for colours: what the paper compares.
FAMILY = {"energy": "energy (ours)", "sorting": "energy (ours)", "contrastive": "contrastive (N=0)",
          "autoencoder": "autoencoder", "ae_sorting": "autoencoder", "mae": "MAE"}
COLOR = {"energy (ours)": "tab:blue", "contrastive (N=0)": "tab:purple",
         "autoencoder": "tab:orange", "MAE": "tab:green"}


def inner_steps(record: dict):
  """N of a pretraining record: its restoration steps, 0 for the contrastive
  objective, "-" for the autoencoders."""
  objective = record["config"]["objective"]
  if objective == "contrastive":
    return 0
  return record["config"]["inner_steps"] if objective in ("energy", "sorting") else "-"


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _axes(n: int, plt):
  fig, axes = plt.subplots(1, max(1, n), figsize=(4 * max(1, n), 3.5), squeeze=False)
  return fig, axes[0]


def _save(fig, path: str, plt) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: byte-stable
  plt.close(fig)


def _nothing(path: str) -> None:
  if os.path.exists(path):
    os.remove(path)


def _mean_err(values: list[float]) -> tuple[float, float]:
  return 100 * float(np.mean(values)), (100 * float(np.std(values, ddof=1))
                                        if len(values) > 1 else 0.0)


BASELINES = ("scratch", "pixels")  # drawn grey: what the pretrainings are measured against


def top1(s: dict, evals: list[str], methods: list[str], path: str) -> None:
  """Top-1 per method with the seed spread as error bars and the value on each
  bar, one panel per evaluation; the axis spans the values (a few points apart),
  not 0-100. An evaluation no method has a value for yet gets no panel."""
  evals = [e for e in evals if any(m in s[e] for m in methods)]
  if not evals:
    return _nothing(path)
  plt = _pyplot()
  fig, axes = _axes(len(evals), plt)
  for ax, e in zip(axes, evals):
    ms = [m for m in methods if m in s[e]]
    means, errs = zip(*[_mean_err(s[e][m]) for m in ms])
    colors = ["tab:gray" if m in BASELINES else "tab:blue" for m in ms]
    ax.bar(range(len(ms)), means, yerr=errs, capsize=3, color=colors)
    for i, (v, d) in enumerate(zip(means, errs)):
      ax.annotate(f"{v:.1f}", (i, v + d), xytext=(0, 2), textcoords="offset points",
                  ha="center", fontsize=6)
    low = min(m - d for m, d in zip(means, errs))
    ax.set_ylim(max(0.0, np.floor(low) - 3), min(100.0, max(means) + max(errs) + 3))
    ax.set_xticks(range(len(ms)), ms, rotation=60, ha="right", fontsize=8)
    ax.set_title(e)
    ax.set_ylabel("top-1 (%)")
  _save(fig, path, plt)


def psnr_per_step(pretrainings: list[dict], path: str) -> None:
  """Held-out PSNR of the corrupted input and after each restoration step, per
  pixel task (mean over seeds)."""
  curves: dict[str, list[list[float]]] = {}
  for r in pretrainings:
    m = r["metrics"]
    if "eval/psnr_corrupted" not in m:
      continue
    n = sum(k.startswith("eval/psnr_step_") for k in m)
    curves.setdefault(r["cell"]["method"], []).append(
        [m["eval/psnr_corrupted"]] + [m[f"eval/psnr_step_{i}"] for i in range(1, n + 1)])
  if not curves:
    return _nothing(path)
  plt = _pyplot()
  fig, (ax,) = _axes(1, plt)
  for method in sorted(curves):
    runs = curves[method]
    steps = min(len(c) for c in runs)
    y = np.mean([c[:steps] for c in runs], axis=0)
    seeds = f"{len(runs)} seed{'s' * (len(runs) > 1)}"
    ax.plot(range(steps), y, marker="o", label=f"{method} ({seeds})")
  ax.set_xticks(range(max(len(c) for runs in curves.values() for c in runs)))
  ax.set_xlabel("restoration step (0 = corrupted input)")
  ax.set_ylabel("held-out PSNR (dB)")
  ax.legend(fontsize=7)
  _save(fig, path, plt)


def _per_eval(s: dict, evals: list[str], path: str, xlabel: str, draw) -> None:
  """One panel per evaluation: ``draw(ax, eval)``, the scratch baseline as a
  dashed line, the labels."""
  if not evals:
    return _nothing(path)
  plt = _pyplot()
  fig, axes = _axes(len(evals), plt)
  for ax, e in zip(axes, evals):
    draw(ax, e)
    if "scratch" in s[e]:
      ax.axhline(_mean_err(s[e]["scratch"])[0], color="gray", linestyle="--", label="scratch")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(e)
    ax.legend(fontsize=6)
  _save(fig, path, plt)


def top1_vs_n(s: dict, evals: list[str], n_sweep: dict[str, int], path: str) -> None:
  """Top-1 against the number of restoration steps N (0: the contrastive
  objective), with the scratch baseline as a line."""
  def draw(ax, e):
    points = sorted((n, m) for m, n in n_sweep.items() if m in s[e])
    means, errs = zip(*[_mean_err(s[e][m]) for _, m in points])
    ax.errorbar([n for n, _ in points], means, yerr=errs, marker="o", capsize=3,
                label="energy, the sweep's task")
    ax.set_xticks(sorted(set(n_sweep.values())))
  _per_eval(s, [e for e in evals if any(m in s[e] for m in n_sweep)], path,
            "N (restoration steps)", draw)


def pretraining_minutes(record: dict, cost: dict) -> float:
  """A pretraining's time: its steps x its method's step time in ``cost``
  (``OUT/cost.json``: every method's step timed in one process, so the methods
  compare whatever else ran during their hours); without one, its images over
  its own median speed (``runner.speed``), robust to a pause but not to a
  neighbour sharing the cores; without that, its wall time."""
  c = cost.get(record["cell"]["method"])
  if c and record.get("train_images"):
    return record["train_images"] / c["batch_size"] * c["step_s"] / 60
  if record.get("train_images") and record.get("img_per_s"):
    return record["train_images"] / record["img_per_s"] / 60
  return record["wall_s"] / 60


def top1_vs_wall(s: dict, evals: list[str], pretrainings: list[dict], cost: dict,
                 path: str, curves: dict[str, list[str]] | None = None) -> None:
  """Top-1 against the pretraining's minutes (``pretraining_minutes``, mean over
  seeds), one point per method, coloured by family: the small-scale analogue of
  the paper's cost comparisons (Tables 4-5). ``curves``: methods joined by a line
  (one method pretrained for several lengths: accuracy against compute)."""
  wall: dict[str, list[float]] = {}
  family: dict[str, str] = {}
  for r in pretrainings:
    wall.setdefault(r["cell"]["method"], []).append(pretraining_minutes(r, cost))
    family[r["cell"]["method"]] = FAMILY.get(r["config"]["objective"], r["config"]["objective"])

  def draw(ax, e):
    seen = set()
    for m in sorted(m for m in wall if m in s[e]):
      x, (y, err), f = float(np.mean(wall[m])), _mean_err(s[e][m]), family[m]
      ax.errorbar([x], [y], yerr=[err], marker="o", capsize=3, color=COLOR.get(f, "black"),
                  label=None if f in seen else f)
      ax.annotate(m, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
      seen.add(f)
    for members in (curves or {}).values():
      points = sorted((float(np.mean(wall[m])), _mean_err(s[e][m])[0], family[m])
                      for m in members if m in wall and m in s[e])
      if len(points) > 1:
        ax.plot([p[0] for p in points], [p[1] for p in points], "-", alpha=0.5,
                color=COLOR.get(points[0][2], "black"))
  xlabel = ("pretraining time: steps x step time of cost.json (min)" if cost
            else "pretraining time at its median speed (min)")
  _per_eval(s, [e for e in evals if any(m in s[e] for m in wall)], path, xlabel, draw)
