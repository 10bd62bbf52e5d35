"""The study harness end to end on a two-method, two-seed grid of tiny synthetic
runs: run, kill during a pretraining, rerun (it resumes that pretraining and
skips the finished cells), report (deterministic)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ebm_pretrain import study
from helpers import ROOT, cli_env

GRID = "configs/study/tiny.py:steps=40"


def _study(*args):
  return [sys.executable, "-m", "ebm_pretrain.study", *args]


def test_grid_runs_resumes_after_a_kill_and_reports(tmp_path):
  out = str(tmp_path / "study")
  grid = study.load_config_file(GRID)
  ids = [c.id for c in study.cells(grid)]
  assert ids[:4] == ["pretrain/mixed/s0", "ft/mixed/s0", "ft_lr/mixed/s0", "knn/mixed/s0"]
  assert len([i for i in ids if i.startswith("pretrain/")]) == 2  # scratch has none
  assert [i for i in ids if i.startswith("ft_lr/")] == ["ft_lr/mixed/s0"]  # restricted
  assert [i for i in ids if "/pixels/" in i] == ["knn/pixels/s0"]  # features only

  only = "[pk]*"  # pretrainings and kNN: 2 methods x 2 seeds, and the pixels
  proc = subprocess.Popen(_study("run", f"--grid={GRID}", f"--out={out}", f"--only={only}"),
                          cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  target = os.path.join(out, "runs", "pretrain_mixed_s1", "checkpoints", "4")
  deadline = time.time() + 400
  while not os.path.isdir(target) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, proc.stdout.read()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  done = sorted(os.listdir(os.path.join(out, "cells")))
  assert done == ["knn__mixed__s0.json", "pretrain__mixed__s0.json"]

  rerun = subprocess.run(_study("run", f"--grid={GRID}", f"--out={out}", f"--only={only}"),
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "pretrain/mixed/s0: done, skipped" in rerun.stdout
  assert "knn/mixed/s0: done, skipped" in rerun.stdout
  assert "Resuming from checkpoint step" in rerun.stdout  # pretrain/mixed/s1 resumed
  cells = sorted(os.listdir(os.path.join(out, "cells")))
  assert len(cells) == 7
  record = json.load(open(os.path.join(out, "cells", "pretrain__mixed__s1.json")))
  assert record["seed"] == 1 and record["config"]["seed"] == 1 and len(record["commit"]) >= 7
  assert record["config"]["data"]["holdout"] == 16 and record["wall_s"] > 0
  assert record["device"] == "1x cpu"  # which machine ran the cell (cli_env: one CPU device)
  # Provenance: a tree that differs from its commit says so, with a hash of the diff.
  assert isinstance(record["dirty"], bool)
  assert (record["diff_sha256"] is not None) == record["dirty"]
  assert "--xla_cpu_experimental_ynn_fusion_type=" in record["xla_flags"]
  assert record["train_images"] == record["config"]["total_steps"] * record["config"]["batch_size"]
  assert record["img_per_s"] > 0
  knn = json.load(open(os.path.join(out, "cells", "knn__scratch__s0.json")))
  assert 0 <= knn["metrics"]["eval/knn_top1"] <= 1
  pixels = json.load(open(os.path.join(out, "cells", "knn__pixels__s0.json")))
  assert 0 <= pixels["metrics"]["eval/knn_top1"] <= 1

  # The report: from the JSON alone, the same bytes every time.
  table = study.report(out)
  assert "| mixed |" in table and "| scratch |" in table and "(2 seeds)" in table
  claims = open(os.path.join(out, "claims.md")).read()
  assert "| pretraining beats scratch | mixed > scratch | " in claims
  row = next(l for l in claims.splitlines() if l.startswith("| pretraining beats")).split(" | ")
  assert row[2] == "needs seeds (2 of 3)"  # two seeds enter no claim
  files = ("table.md", "claims.md", "top1.png", "top1_vs_n.png", "top1_vs_wall.png",
           "psnr_steps.png")
  digest = lambda: [hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest()
                    for f in files]
  first = digest()
  readme = tmp_path / "README.md"
  # (a README with the claims block only)
  readme.write_text("intro\n<!-- claims:begin -->\nold\n<!-- claims:end -->\nend\n")
  study.report(out, readme=str(readme))
  assert digest() == first
  assert readme.read_text() == f"intro\n<!-- claims:begin -->\n{claims}<!-- claims:end -->\nend\n"


def test_the_test_split_run_reuses_the_validation_runs_pretrainings(tmp_path):
  """``--pretrained_from``: the final test-split grid evaluates the validation
  grid's pretrainings (the same runs) instead of repeating them, and refuses ones
  made with another config or not finished."""
  import pytest
  from ebm_pretrain.errors import ConfigError
  val, final = str(tmp_path / "val"), str(tmp_path / "test")
  quiet = lambda *a, **k: None
  study.run("configs/study/tiny.py:steps=4", val, "*/mixed/s0", log=quiet)
  cost = json.dumps(dict(methods=dict(mixed=dict(batch_size=8, step_s=0.5))))
  with open(os.path.join(val, "cost.json"), "w") as f:
    f.write(cost)  # (study cost's): the reused pretrainings' step times come along
  study.run("configs/study/tiny.py:steps=4,split=test", final, "[pk]*/mixed/s0", log=quiet,
            pretrained_from=val)
  reused = json.load(open(os.path.join(final, "cells", "pretrain__mixed__s0.json")))
  source = json.load(open(os.path.join(val, "cells", "pretrain__mixed__s0.json")))
  assert reused.pop("reused_from") == os.path.join(val, "cells", "pretrain__mixed__s0.json")
  assert reused == source
  assert not os.path.exists(os.path.join(final, "runs", "pretrain_mixed_s0"))
  assert open(os.path.join(final, "cost.json")).read() == cost
  knn = json.load(open(os.path.join(final, "cells", "knn__mixed__s0.json")))
  assert knn["config"]["data"]["eval_split"] == "test"
  assert knn["evaluator"]["split"] == "test"
  val_knn = json.load(open(os.path.join(val, "cells", "knn__mixed__s0.json")))
  assert val_knn["evaluator"]["split"] == "holdout"
  # Another pretraining config, or a pretraining the source has not finished: refused.
  with pytest.raises(ConfigError, match="pretrain/mixed/s0 .* another config: total_steps: 4 -> 6"):
    study.run("configs/study/tiny.py:steps=6,split=test", str(tmp_path / "other"),
              "pretrain/mixed/s0", log=quiet, pretrained_from=val)
  with pytest.raises(ConfigError, match="pretrain/mixed/s1 is not finished in"):
    study.run("configs/study/tiny.py:steps=4,split=test", final, "knn/mixed/s1", log=quiet,
              pretrained_from=val)
  # Provenance: the pretraining cell records its checkpoint's hash; each evaluation
  # records the one it read; a checkpoint changed since is refused.
  assert source["checkpoint"]["step"] == 4 and len(source["checkpoint"]["sha256"]) == 64
  assert knn["pretrained_checkpoint"] == dict(source["checkpoint"],
                                              path=os.path.join(val, "runs", "pretrain_mixed_s0"))
  assert val_knn["pretrained_checkpoint"]["sha256"] == source["checkpoint"]["sha256"]
  state = os.path.join(val, "runs", "pretrain_mixed_s0", "checkpoints", "4", "state")
  victim = next(os.path.join(d, f) for d, _, fs in sorted(os.walk(state)) for f in sorted(fs))
  with open(victim, "ab") as f:
    f.write(b"\0")
  with pytest.raises(ConfigError, match="not the step 4 .* its cell .* recorded: the "
                                        "pretraining changed since"):
    study.run("configs/study/tiny.py:steps=4,split=test", final, "ft/mixed/s0", log=quiet,
              pretrained_from=val)


def test_an_evaluation_waits_for_its_pretrainings_cell(tmp_path):
  """(Parallel `study run --only` processes share an OUT.) A pretraining whose
  cell is not recorded, still running or never run, is not evaluated."""
  import pytest
  from ebm_pretrain.errors import ConfigError
  out = str(tmp_path / "out")
  os.makedirs(os.path.join(out, "runs", "pretrain_mixed_s0", "checkpoints"))
  with pytest.raises(ConfigError, match="pretrain/mixed/s0 has no finished cell .* still running"):
    study.run("configs/study/tiny.py:steps=2", out, "knn/mixed/s0", log=lambda *a, **k: None)


def test_diagnostic_evaluations_get_their_own_table_and_no_say_in_the_claims(tmp_path):
  out = tmp_path / "out"
  (out / "cells").mkdir(parents=True)
  grid = dict(evals=dict(knn=dict(kind="knn"), knn_flat=dict(kind="knn", pool="flat",
                                                             diagnostic=True)),
              claims=[dict(claim="c", method="a", than=["b"], kind="beats")])
  (out / "grid.json").write_text(json.dumps(grid))
  top1 = {("knn", "a"): 0.7, ("knn", "b"): 0.6, ("knn_flat", "a"): 0.5, ("knn_flat", "b"): 0.9}
  for (ev, method), v in top1.items():
    for seed in (0, 1, 2):
      record = dict(cell=dict(kind="knn", method=method, seed=seed, eval=ev), seed=seed,
                    config=dict(data=dict(eval_split="holdout")), dirty=False,
                    metrics={f"eval/{ev}_top1": v + 0.01 * seed})
      (out / "cells" / f"{ev}__{method}__s{seed}.json").write_text(json.dumps(record))
  table = study.report(str(out))
  main, diagnostics = table.split("Frozen-feature diagnostics")
  assert "| method | knn |" in main and "knn_flat" not in main
  assert "| method | knn_flat |" in diagnostics and "| b | 91.00 ± 1.00 (3 seeds) |" in diagnostics
  claims = open(out / "claims.md").read()
  assert "| paper's claim | comparison | knn | at this scale |" in claims
  # +10 points, s = 1 each side, n = 3: t = 12.2 on 4 degrees of freedom.
  assert "| c | a > b | +10.00 [+7.73, +12.27] p<0.001 holds | holds |" in claims


def test_holdout_cells_from_before_the_clean_bank_are_named_and_not_counted(tmp_path):
  """A holdout kNN cell written before the clean bank (no ``dirty`` field) saw
  holdout images in its bank: it is left out of the table and the claims and
  named for a rerun. A test-split cell of that age, or a fine-tuning (never
  trained on the holdout), counts."""
  def write(out, split, method, seed, v, clean):
    record = dict(cell=dict(kind="knn", method=method, seed=seed, eval="knn"), seed=seed,
                  config=dict(data=dict(eval_split=split)), metrics={"eval/knn_top1": v})
    if clean:
      record["dirty"] = False
    (out / "cells" / f"knn__{method}__s{seed}.json").write_text(json.dumps(record))
  hold, test = tmp_path / "hold", tmp_path / "test"
  for out, split in ((hold, "holdout"), (test, "test")):
    (out / "cells").mkdir(parents=True)
    (out / "grid.json").write_text(json.dumps(dict(
        evals=dict(ft=dict(kind="finetune"), knn=dict(kind="knn")),
        claims=[dict(claim="c", method="a", than=["b"], kind="beats")])))
    for seed in (0, 1, 2):
      write(out, split, "a", seed, 0.70 + 0.01 * seed, clean=True)
      write(out, split, "b", seed, 0.60 + 0.01 * seed, clean=seed > 0)
    write(out, split, "b", 3, 0.99, clean=False)
    ft = dict(cell=dict(kind="finetune", method="b", seed=0, eval="ft"), seed=0,
              config=dict(data=dict(eval_split=split)), metrics={"eval/top1": 0.5})
    (out / "cells" / "ft__b__s0.json").write_text(json.dumps(ft))
  table = study.report(str(hold))
  assert "| b | 50.00 (1 seed) | 61.50 ± 0.71 (2 seeds) |" in table
  assert "Not counted until rerun on the clean bank" in table and "b/s0, b/s3." in table
  assert ("| a > b | - | needs seeds (2 of 3) | needs seeds; 1 of 2 not measured |"
          in open(hold / "claims.md").read())
  table = study.report(str(test))
  assert "| b | 50.00 (1 seed) | 70.50 ± 19.02 (4 seeds) |" in table and "Not counted" not in table


def test_the_pretraining_lr_search_gets_its_own_table_and_keeps_x1_within_the_tolerance(
    tmp_path):
  """A rate replaces x1 only when the mean of its evaluations is higher by more
  than the tolerance; the search's runs stay out of the main table and the claims."""
  import importlib
  study_report = importlib.import_module("ebm_pretrain.study.report")
  out = tmp_path / "out"
  (out / "cells").mkdir(parents=True)
  factors = {"x03": 0.3, "x1": 1.0, "x3": 3.0}
  search = {f"{m}_lr{n}": dict(method=m, factor=f) for m in ("a", "b", "c")
            for n, f in factors.items()}
  grid = dict(evals=dict(knn=dict(kind="knn"), probe=dict(kind="linear_probe")),
              pretrain_lr_search=search,
              claims=[dict(claim="c", method="a", than=["b"], kind="beats")])
  (out / "grid.json").write_text(json.dumps(grid))
  tol = study_report.SEARCH_TOLERANCE / 100
  # a: x3 is better by 1.5 tolerances (kept); b: x0.3 by half of one (x1 kept);
  # c: its x3 has no probe yet (nothing kept).
  top1 = {"a_lrx03": 0.70, "a_lrx1": 0.70, "a_lrx3": 0.70 + 1.5 * tol,
          "b_lrx03": 0.80 + 0.5 * tol, "b_lrx1": 0.80, "b_lrx3": 0.60,
          "c_lrx03": 0.5, "c_lrx1": 0.5, "c_lrx3": 0.9, "a": 0.7, "b": 0.6}
  for method, v in top1.items():
    seeds = (0,) if method in search else (0, 1, 2)
    for ev, kind in (("knn", "knn"), ("probe", "linear_probe")):
      if method == "c_lrx3" and ev == "probe":
        continue
      for seed in seeds:
        record = dict(cell=dict(kind=kind, method=method, seed=seed, eval=ev), seed=seed,
                      config=dict(data=dict(eval_split="holdout")), dirty=False,
                      metrics={f"eval/{ev}_top1": v + 0.01 * seed})
        (out / "cells" / f"{ev}__{method}__s{seed}.json").write_text(json.dumps(record))
  table = study.report(str(out))
  main, searched = table.split("Pretraining learning-rate search")
  assert "_lr" not in main and "| a | 71.00 ± 1.00 (3 seeds) |" in main
  rows = {tuple(c.strip() for c in line.split("|")[1:3]): line
          for line in searched.splitlines() if line.startswith("| a") or line.startswith("| b")
          or line.startswith("| c")}
  assert rows[("a", "×3")].endswith("| ✓ |") and rows[("a", "×1")].endswith("|  |")
  assert rows[("b", "×1")].endswith("| ✓ |") and rows[("b", "×0.3")].endswith("|  |")
  assert not any(rows[("c", x)].endswith("| ✓ |") for x in ("×0.3", "×1", "×3"))
  cells = lambda line: [c.strip() for c in line.split("|")[3:-2]]
  assert cells(rows[("c", "×3")]) == ["-", "90.00 (1 seed)", "-", "-"]  # loss, knn, probe, mean
  assert cells(rows[("b", "×3")]) == ["-", "60.00 (1 seed)", "60.00 (1 seed)", "60.00"]
  assert "_lr" not in open(out / "claims.md").read()


def test_other_backbones_are_an_argument_and_segmentation_is_judged_by_its_miou(tmp_path):
  """The transfer grids (issue 29): configs/study/backbones.py's family reaches
  the pretraining and the scratch fine-tuning, all else the main grid's; a
  segmentation fine-tuning's cell is judged by its mIoU."""
  from helpers import fake_idx_dir
  main = study.Runner(study.load_config_file("configs/study/fashion_mnist.py:split=test"), "")
  grid = study.load_config_file("configs/study/backbones.py")
  runner = study.Runner(grid, "")
  for family in ("convnext", "swin"):
    pre = runner.pretrain_config(f"{family}_mixed", 2)
    assert pre.model.name == family and pre.seed == 2
    assert (pre.total_epochs, pre.task, pre.data.holdout) == (3, "mixed", 5000)
    ft = runner.finetune_config(study.Cell("finetune", f"{family}_scratch", 1, "ft_1pct"), "")
    assert ft.model.name == family and ft.seed == 1
    assert ft.data.to_dict() == main.finetune_config(
        study.Cell("finetune", "scratch", 1, "ft_1pct"), "").data.to_dict() | dict(image_size=32)
  assert [(c["method"], c["than"]) for c in grid.claims] == [
      ("convnext_mixed", ["convnext_scratch"]), ("swin_mixed", ["swin_scratch"])]
  seg = study.load_config_file("configs/study/segmentation.py")
  assert study.Runner(seg, "").pretrain_config("mixed", 0).to_dict() == \
      main.pretrain_config("mixed", 0).to_dict()  # the main grid's pretraining

  out = str(tmp_path / "out")
  spec = f"configs/study/tiny.py:steps=2,seg=True,idx_dir={fake_idx_dir(tmp_path / 'idx')}"
  study.run(spec, out, "*/s0", log=lambda *a, **k: None)
  cells = sorted(os.listdir(os.path.join(out, "cells")))
  assert cells == ["pretrain__mixed__s0.json", "seg__mixed__s0.json", "seg__scratch__s0.json"]
  record = json.load(open(os.path.join(out, "cells", "seg__mixed__s0.json")))
  assert record["config"]["objective"] == "segmentation"
  miou = record["metrics"]["eval/miou"]
  table = study.report(out)
  assert table.startswith("mIoU (%) on the `holdout` split")
  assert f"| mixed | {100 * miou:.2f} (1 seed) |" in table
  assert "seg: mIoU points, not top-1." in table  # the claims' rule says so too


def test_cost_times_every_pretraining_in_one_process_and_the_report_uses_it(tmp_path):
  """``study cost``: one step of each pretraining method (not scratch, not the
  pixels) compiled from its cells' config and timed in the same rounds; the
  report then puts a pretraining at its steps x its method's step time."""
  from ebm_pretrain.study import cost, plots
  grid = study.load_config_file(GRID)
  grid.methods.mixed_n3 = "mixed"
  grid.method_overrides.mixed_n3 = dict(inner_steps=3)
  out = str(tmp_path / "out")
  record = cost.measure(grid, out, rounds=2, grid_spec="tiny + mixed_n3")
  assert json.load(open(os.path.join(out, "cost.json"))) == json.loads(json.dumps(record))
  m = record["methods"]
  assert sorted(m) == ["mixed", "mixed_n3"]
  # Timed before any cell has run (a fresh OUT): cost.json, and no report to fail on.
  fresh = tmp_path / "fresh"
  study.main(["cost", f"--grid={GRID}", f"--out={fresh}", "--rounds=1"])
  assert sorted(json.load(open(fresh / "cost.json"))["methods"]) == ["mixed"]
  assert all(v["step_s"] > 0 and v["batch_size"] == 8 and v["objective"] == "energy"
             for v in m.values())
  # The step each is timed with is its own: N = 3 restores three times.
  assert m["mixed_n3"]["flops"] > 1.3 * m["mixed"]["flops"]
  run = dict(cell=dict(method="mixed_n3"), train_images=80, img_per_s=1.0, wall_s=1.0)
  assert plots.pretraining_minutes(run, cost.load(out)) == 10 * m["mixed_n3"]["step_s"] / 60
  assert plots.pretraining_minutes(run, {}) == 80 / 60  # no cost.json: its own speed
  # A method the cost was not measured for is named in the report, not mixed in silently.
  (tmp_path / "out" / "cells").mkdir()
  for method in ("mixed", "sorting"):
    record = dict(cell=dict(kind="pretrain", method=method, seed=0, eval=""), seed=0,
                  wall_s=60.0, img_per_s=10.0, train_images=80, metrics=dict(loss=0.1),
                  config=dict(objective="energy" if method == "mixed" else method,
                              total_epochs=1, inner_steps=2, data=dict(eval_split="holdout")))
    (tmp_path / "out" / "cells" / f"pretrain__{method}__s0.json").write_text(json.dumps(record))
  table = study.report(out)
  assert f"| {1000 * m['mixed']['step_s']:.0f} |" in table
  assert "at their own median speed until `study cost` is rerun: sorting." in table


def test_committed_results_regenerate_byte_for_byte_and_match_the_readme(tmp_path):
  """What `study report` makes of the committed cells is what is committed: the
  tables, the plots and the docs' results and claims blocks."""
  import shutil
  results = os.path.join(ROOT, "results")
  for name in sorted(os.listdir(results)):
    committed = os.path.join(results, name)
    copy = tmp_path / name
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("runs"))
    # The holdout's blocks live in docs/study.md, the test split's in the README,
    # the other backbones' and segmentation's in their docs.
    doc = {"fashion_mnist": "docs/study.md", "fashion_mnist_test": "README.md",
           "fashion_mnist_backbones": "docs/backbones.md",
           "garment_scenes": "docs/segmentation.md"}.get(name)
    readme = tmp_path / "doc.md"
    if doc:
      shutil.copy(os.path.join(ROOT, doc), readme)
    study.report(str(copy), readme=str(readme) if doc else None)
    for f in sorted(os.listdir(copy)):
      if os.path.isfile(copy / f):
        assert (copy / f).read_bytes() == open(os.path.join(committed, f), "rb").read(), f
    if doc:
      assert readme.read_text() == open(os.path.join(ROOT, doc)).read(), doc


@pytest.mark.parametrize("doc,rows", [
    ("README.md", {"scratch": ["scratch"], "mixed (N = 2)": ["mixed"], "sr": ["sr"],
                   "sorting": ["sorting"], "MAE, 3 / 15 epochs": ["mae", "mae_ep15"],
                   "mixed N = 1 / N = 3": ["mixed_n1", "mixed_n3"], "raw pixels": ["pixels"]}),
    ("docs/study.md", {"mixed, 3 epochs (19.4 min), 5 seeds": ["mixed"],
                       "MAE, 3 epochs (3.8 min), 5 seeds": ["mae"],
                       "MAE, 15 epochs (18.8 min), 3 seeds": ["mae_ep15"]}),
])
def test_the_hand_written_top1_tables_are_the_test_cells(doc, rows):
  """The test split's top-1 tables in the docs are written by hand (rows that join
  two methods, or name their time); each number in them is the committed test
  cells' mean (± their std over seeds), and each row is there."""
  import importlib
  import numpy as np
  # The module: the package exports the function `report` under its name.
  report = importlib.import_module("ebm_pretrain.study.report")
  s = report.summary([r for r in report.records(os.path.join(ROOT, "results/fashion_mnist_test"))
                      if not report.old_bank(r)])
  text = open(os.path.join(ROOT, doc)).read()
  lines = text[text.index(" | ft 10% | ft 1% | kNN | probe |"):].splitlines()
  seen = set()
  for line in lines[2:]:
    if not line.startswith("|"):
      break
    label, *cells = [c.strip() for c in line.strip("|").split("|")]
    seen.add(label)
    for ev, cell in zip(["ft_10pct", "ft_1pct", "knn", "probe"], cells):
      for method, number in zip(rows[label], cell.split(" / ")):
        values = s.get(ev, {}).get(method)
        if number == "-":
          assert not values, (label, ev)
          continue
        mean, _, std = number.partition(" ± ")
        assert mean == f"{100 * np.mean(values):.2f}", (doc, label, ev, method)
        if std:
          assert std == f"{100 * np.std(values, ddof=1):.2f}", (doc, label, ev, method)
  assert seen == set(rows)


def test_the_test_split_runs_only_what_the_claims_read():
  """The learning rate and the features are chosen on the holdout; the test split
  gives the final numbers of the four evaluations the claims compare, no more."""
  holdout = study.load_config_file("configs/study/fashion_mnist.py")
  test = study.load_config_file("configs/study/fashion_mnist.py:split=test")
  assert sorted(test.evals) == ["ft_10pct", "ft_1pct", "knn", "probe"]
  assert all(test.evals[k].to_dict() == holdout.evals[k].to_dict() for k in test.evals)
  assert len(holdout.evals) > len(test.evals)
  assert test.overrides.data.eval_split == "test" and holdout.overrides.data.eval_split == "holdout"
  pre = [c.id for c in study.cells(test) if c.kind == "pretrain"]
  # The pretraining learning-rate search runs on the holdout alone, seed 0, and is
  # judged by the four evaluations the claims read.
  search = holdout.pretrain_lr_search
  assert "pretrain_lr_search" not in test and sorted({s.method for s in search.values()}) == [
      "ae_sr", "mae", "mixed", "sr"]
  assert pre == [c.id for c in study.cells(holdout)
                 if c.kind == "pretrain" and c.method not in search]
  searched = [c for c in study.cells(holdout) if c.method in search]
  assert {c.seed for c in searched} == {0} and len(searched) == 5 * len(search)
  assert {c.eval for c in searched} == {"", *test.evals}
  runner = study.Runner(holdout, "/nonexistent")
  base = runner.pretrain_config("sr", 0)
  for name in ("sr_lrx03", "sr_lrx3"):
    c = runner.pretrain_config(name, 0)
    assert c.optim.base_lr == base.optim.base_lr * search[name].factor
    c.optim.base_lr = base.optim.base_lr
    assert c.to_dict() == base.to_dict()  # nothing else differs


def test_a_larger_grid_is_an_argument_not_a_change():
  """The GPU grid: more epochs and a larger ViT reach every pretraining and the
  scratch fine-tunings through the grid's argument alone."""
  grid = study.load_config_file("configs/study/fashion_mnist.py:epochs=50,variant=S/4")
  runner = study.Runner(grid, "/nonexistent")
  pre = runner.pretrain_config("mixed", 0)
  assert (pre.model.variant, pre.total_epochs, pre.data.holdout) == ("S/4", 50, 5000)
  for name in ("ft_1pct", "ft_10pct_lrx3"):
    ft = study.load_config_file(f"{grid.finetune_config}:{grid.evals[name].arg}")
    assert ft.model.variant == "S/4" and not ft.init


def test_a_cell_is_dirty_for_changed_code_not_for_the_runs_own_output(tmp_path, monkeypatch):
  """A run rewrites its (tracked, committed) OUT/grid.json, and a test-split
  grid's runs rewrite their pretraining grid's: that is output, not a change to
  the code that made the cells."""
  import subprocess

  from ebm_pretrain.study import runner
  repo = tmp_path / "repo"
  (repo / "results" / "grid1").mkdir(parents=True)
  (repo / "code.py").write_text("x = 1\n")
  (repo / "results" / "grid1" / "grid.json").write_text("{}\n")
  git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],
                                  cwd=repo, check=True, capture_output=True)
  git("init", "-q")
  git("add", ".")
  git("commit", "-qm", "init")
  monkeypatch.setattr(runner, "REPO", str(repo))
  out = str(repo / "results" / "grid1")
  assert runner._source(out)["dirty"] is False
  (repo / "results" / "grid1" / "grid.json").write_text('{"methods": {}}\n')
  assert runner._source(out)["dirty"] is False
  (repo / "results" / "grid0").mkdir()
  (repo / "results" / "grid0" / "grid.json").write_text("{}\n")
  git("add", ".")
  git("commit", "-qm", "the pretraining grid")
  (repo / "results" / "grid0" / "grid.json").write_text('{"methods": {}}\n')
  assert runner._source(out)["dirty"] is False
  (repo / "code.py").write_text("x = 2\n")
  source = runner._source(out)
  assert source["dirty"] is True and len(source["diff_sha256"]) == 64


def test_a_method_that_differs_only_in_length_takes_its_twins_step_time():
  """mae_ep15 is mae's program run longer: cost.json's mae step times it; a
  method whose pretraining differs otherwise (N) does not borrow one."""
  from ebm_pretrain.study import cost as study_cost
  config = dict(objective="mae", total_epochs=3, seed=0, optim=dict(base_lr=1e-3))
  pre = [dict(cell=dict(method="mae"), config=config),
         dict(cell=dict(method="mae_ep15"), config=dict(config, total_epochs=15, seed=1)),
         dict(cell=dict(method="mae_lr"), config=dict(config, optim=dict(base_lr=3e-3)))]
  cost = {"mae": dict(step_s=0.1, batch_size=64)}
  got = study_cost.with_same_steps(cost, pre)
  assert got["mae_ep15"] == dict(step_s=0.1, batch_size=64, same_step_as="mae")
  assert "mae_lr" not in got and got["mae"] == cost["mae"]
