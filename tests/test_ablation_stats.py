"""The ablation's paired comparison: signs follow each metric's direction, SE over seeds, seeds won."""

import json
from pathlib import Path

import pytest

from experiments import ablation


def run(variant, seed, miou, rmse):
    metrics = {"miou_objects": miou, "miou_all": miou, "rmse_objects": rmse, "rmse_all": rmse, "t2i_r1": 0.0}
    return {"variant": variant, "seed": seed, "metrics": metrics}


def test_paired_differences_count_lower_rmse_as_an_improvement():
    runs = [run("two_cls", 0, 0.10, 3.0), run("two_cls", 1, 0.20, 3.0), run("two_cls", 2, 0.30, 3.0),
            run("tips", 0, 0.11, 2.5), run("tips", 1, 0.23, 2.9), run("tips", 2, 0.29, 2.0)]
    diff = ablation.paired_differences(runs, "two_cls", "tips")
    assert diff["rmse_objects"]["mean"] == pytest.approx((0.5 + 0.1 + 1.0) / 3)
    assert diff["rmse_objects"]["wins"] == 3
    miou = diff["miou_objects"]
    assert miou["mean"] == pytest.approx(0.01) and miou["wins"] == 2 and miou["n"] == 3
    assert miou["se"] == pytest.approx(0.02 / 3 ** 0.5)  # sample std of (0.01, 0.03, -0.01) is 0.02
    assert not miou["beats_2se"] and diff["rmse_objects"]["beats_2se"]


def test_paired_differences_need_two_shared_seeds():
    runs = [run("two_cls", 0, 0.1, 3.0), run("tips", 0, 0.2, 2.0), run("tips", 1, 0.2, 2.0)]
    assert ablation.paired_differences(runs, "two_cls", "tips") is None
    assert ablation.comparison_table(runs).startswith("No paired comparison")


def test_seeds_line_names_each_variants_seeds_when_they_differ():
    same = {"two_cls": {"seeds": [0, 1, 2]}, "tips": {"seeds": [0, 1, 2]}}
    assert ablation.seeds_line(same) == "seeds 0, 1, 2"
    partial = {"two_cls": {"seeds": [0, 1, 2]}, "tips": {"seeds": [0, 1]}}
    assert ablation.seeds_line(partial) == "seeds (b) 0, 1, 2; (d) 0, 1"


def test_report_without_finished_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        ablation.main(["--report", "--out", str(tmp_path / "results"), "--workdir", str(tmp_path / "work")])


def test_recipe_tag_keeps_committed_folders_and_separates_scene_counts():
    assert ablation.recipe_tag(None, None, []) == ""
    assert ablation.recipe_tag(600, None, []) == "-steps600"  # results/ablation/small-steps600
    assert ablation.recipe_tag(None, None, ["data.global_scale=[0.9,1.0]"]) == "-set504281e8"
    assert ablation.recipe_tag(600, 16384, []) == "-steps600-scenes16384"
    assert ablation.recipe_tag(600, 16384, []) != ablation.recipe_tag(600, 8192, [])
    assert ablation.recipe_tag(600, None, [], (1000, 200)) == "-steps600-probe1000-200"


def test_scenes_folder_keeps_the_committed_names_and_separates_probe_splits():
    assert ablation.scenes_folder(None, None) == "scenes"  # runs/ablation/small/scenes
    assert ablation.scenes_folder(16384, None) == "scenes16384"
    assert ablation.scenes_folder(None, (1000, 200)) == "scenes-probe1000-200"


def test_probe_split_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--probe-split", "1000", "0", "--out", str(tmp_path / "r"), "--workdir", str(tmp_path / "w")])
    assert "--probe-split 1000 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_scenes_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--scenes", "0", "--out", str(tmp_path / "results"), "--workdir", str(tmp_path / "work")])
    assert "--scenes 0" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_recorded_config_lists_the_seeds_and_variants_the_file_holds():
    preset = {"seeds": [3, 4], "variants": ["clip_alt", "two_cls"], "train": ["run.steps=600"]}
    runs = [run(v, s, 0.1, 3.0) for s in (0, 1, 2, 3, 4) for v in ("two_cls", "clip_alt")] + [run("random", 0, 0, 3)]
    recorded = ablation.recorded_config(preset, runs)
    assert recorded["seeds"] == [0, 1, 2, 3, 4]
    assert recorded["variants"] == ["clip_alt", "two_cls", "random"]
    assert recorded["train"] == preset["train"] and preset["seeds"] == [3, 4]  # the invocation's own preset untouched
    assert ablation.recorded_config(preset, []) == preset


def test_probe_records_the_depth_heads_aligned_error_and_bias_beside_the_compared_metrics(tmp_path, monkeypatch):
    """The per-image diagnostics go into results.json: the probe outputs they come from are not committed."""
    def depth_set(rmse, aligned, bias):
        return {"rmse": rmse, "rmse_aligned": aligned, "bias": bias}

    def fake_run(cmd, log):  # stands in for the tips-probe subprocesses: writes the JSON each task would
        task, out = cmd[1], Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        metrics = {"segmentation": {"miou": 0.3, "miou_subset": 0.05},
                   "depth": {"all": depth_set(2.0, 1.4, -0.1), "objects": depth_set(2.5, 0.9, 1.2)},
                   "retrieval": {"t2i": {"R@1": 40.0 if "syn" in cmd else 10.0}}}[task]
        (out / f"{task}-x.json").write_text(json.dumps({"metrics": metrics}))
        return 0.0

    monkeypatch.setattr(ablation, "run", fake_run)
    got = ablation.probe(["--model", "m"], tmp_path / "data", tmp_path / "probes", ablation.PRESETS["small"], 0,
                         "syn", tmp_path)
    assert got["rmse_objects"] == 2.5 and got["rmse_objects_aligned"] == 0.9 and got["bias_objects"] == 1.2
    assert got["bias_all"] == -0.1 and got["rmse_all"] == 2.0 and got["miou_objects"] == 0.05
    assert got["t2i_r1"] == 40.0 and got["t2i_r1_cls1"] == 10.0


def test_each_run_records_the_machine_it_was_made_on(tmp_path, monkeypatch):
    """Runs of one test may come from several sessions' machines; each record names its CPU and torch build."""
    monkeypatch.setattr(ablation, "run", lambda cmd, log: 12.5)
    monkeypatch.setattr(ablation, "probe", lambda *args: {"rmse_objects": 2.0})
    got = ablation.run_variant(ablation.PRESETS["small"], "clip_alt", 3, tmp_path / "data", tmp_path / "run", "cpu", 1)
    machine = got["machine"]
    assert machine["device"] == "cpu" and machine["cores"] >= 1
    assert machine["torch"] == ablation.importlib.metadata.version("torch") and machine["cpu"]
    assert got["wall_s"] == 12.5 and got["seed"] == 3
