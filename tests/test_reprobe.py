"""experiments/reprobe.py finds each recipe's run folders and reports the original and the new split side by side."""

import json
from pathlib import Path

import pytest

from experiments import ablation
from experiments import reprobe


@pytest.mark.parametrize("steps, scenes, overrides", [(None, None, []), (1000, None, []),
                                                       (600, 16384, ["data.global_scale=[0.9,1.0]"])])
def test_run_folder_is_where_ablation_trained_the_recipe(steps, scenes, overrides):
    tag = ablation.recipe_tag(steps, scenes, overrides)
    folder = reprobe.run_folder(Path("results/ablation") / f"small{tag}", "small", Path("runs/ablation"), "tips", 2)
    assert folder == Path("runs/ablation/small") / f"runs{tag}" / "tips-seed2"


def test_split_name_reads_the_manifest_and_rejects_other_folders(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"pretrain": 5, "train": 1000, "val": 200}}))
    assert reprobe.split_name(tmp_path) == "probe1000-200"
    with pytest.raises(SystemExit, match="no manifest.json"):
        reprobe.split_name(tmp_path / "elsewhere")


def test_a_run_without_a_trained_model_is_named():
    with pytest.raises(SystemExit, match="two_cls seed 3: no trained model"):
        reprobe.model_args({"variant": "two_cls", "seed": 3}, Path("/nonexistent/run"), "tiny_p8")
    assert reprobe.model_args({"variant": "random", "seed": 0}, Path("/x"), "tiny_p8") == ["--random-init", "tiny_p8"]


def test_summary_table_shows_both_splits_for_the_same_seeds():
    def run(variant, seed, rmse):
        keys = ("miou_objects", "miou_all", "rmse_objects", "rmse_all", "t2i_r1")
        return {"variant": variant, "seed": seed, "metrics": {k: rmse for k in keys}}
    original = [run("two_cls", 0, 2.0), run("two_cls", 1, 4.0), run("two_cls", 2, 100.0)]
    reprobed = [run("two_cls", 0, 1.0), run("two_cls", 1, 3.0)]
    row = next(line for line in reprobe.summary_table(original, reprobed, "probe1000-200").splitlines()
               if line.startswith("| (b)"))
    assert "| 0, 1 |" in row and "3.000 ± 1.414 → 2.000 ± 1.414" in row  # seed 2 was not re-probed, so not averaged
