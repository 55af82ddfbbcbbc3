"""Global probes on a scenes probe split: the main-object labels, zero-shot on them, retrieval on its captions."""

import json

import numpy as np
import pytest
from PIL import Image

from tips_pipelines.scenes import main as scenes_main
from tips_eval import retrieval, zero_shot
from tips_eval.global_data import read_scene_objects

CLASSES = [{"id": 0, "name": "sky", "is_object": False}, {"id": 1, "name": "ground", "is_object": False},
           {"id": 2, "name": "sphere", "is_object": True}, {"id": 3, "name": "cube", "is_object": True}]


def _split(root, segs):
    (root / "val").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "ignore_index": 255}))
    for i, seg in enumerate(segs):
        Image.fromarray(np.zeros((*seg.shape, 3), np.uint8)).save(root / "val" / f"val-{i}.png")
        Image.fromarray(seg.astype(np.uint8)).save(root / "val" / f"val-{i}.seg.png")


def test_main_object_is_the_object_class_with_most_pixels_and_sky_or_ground_never_count(tmp_path):
    big_ground = np.ones((8, 8))  # ground covers most of every image; only object classes compete
    a = big_ground.copy(); a[0, :3] = 2; a[1, :5] = 3  # 3 sphere vs 5 cube pixels → cube
    b = big_ground.copy(); b[0, :4] = 2; b[1, :2] = 3  # → sphere
    c = big_ground.copy(); c[0, :2] = 2; c[1, :2] = 3  # a tie goes to the lower id: sphere
    d = big_ground.copy()  # no object at all: left out
    _split(tmp_path, [a, b, c, d])
    data = read_scene_objects(tmp_path, "val")
    assert data.class_names == ["sphere", "cube"]
    assert [p.name for p in data.paths] == ["val-0.png", "val-1.png", "val-2.png"]
    assert data.labels == [1, 0, 0]


def test_a_split_without_object_pixels_is_refused_with_the_folder_named(tmp_path):
    _split(tmp_path, [np.ones((4, 4))])
    with pytest.raises(ValueError, match="no image shows an object pixel"):
        read_scene_objects(tmp_path, "val")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    assert scenes_main(["--out", str(out), "--num-pretrain", "2", "--num-train", "2", "--num-val", "6",
                        "--resolution", "32", "--shard-size", "2", "--num-workers", "1"]) == 0
    return out / "probe"


def _random(out):
    return ["--random-init", "tiny_p8", "--tokenizer", "bpe", "--resolution", "32", "--num-workers", "0",
            "--no-progress", "--out", str(out)]


def test_zero_shot_on_a_generated_scenes_split_scores_every_image_with_an_object(scenes, tmp_path):
    assert zero_shot.main(["--data", f"scenes:{scenes}", "--split", "val", "--templates", "simple", *_random(tmp_path)]) == 0
    result = json.loads((tmp_path / "zero-shot.json").read_text())
    expected = read_scene_objects(scenes, "val")
    assert result["metrics"]["num_classes"] == 4 and result["metrics"]["num_images"] == len(expected.paths) > 0
    assert result["protocol"]["labels"].startswith("main object")
    assert sum(map(sum, result["metrics"]["confusion_matrix"])) == len(expected.paths)


def test_retrieval_reads_the_scenes_split_captions(scenes, tmp_path):
    assert retrieval.main(["--data", str(scenes / "val"), *_random(tmp_path)]) == 0
    result = json.loads((tmp_path / "retrieval.json").read_text())
    assert result["protocol"]["caption_field"] == "alt_text"
    assert result["metrics"]["num_images"] == 6 == result["metrics"]["num_captions"]
    assert 0 <= result["metrics"]["text_to_image"]["R@1"] <= 100


def test_every_run_appends_a_line_and_compare_puts_the_models_side_by_side(scenes, tmp_path, capsys):
    import csv
    import io

    from tips_eval import cli

    for seed in ("0", "1"):  # one label, two identities: two rows
        assert retrieval.main(["--data", str(scenes / "val"), *_random(tmp_path), "--seed", seed]) == 0
        last = json.loads((tmp_path / "retrieval.json").read_text())
    assert zero_shot.main(["--data", f"scenes:{scenes}", "--templates", "simple", *_random(tmp_path)]) == 0
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["task"] for r in lines] == ["retrieval", "retrieval", "zero-shot"]  # the file kept the first run
    assert lines[0]["model"]["label"] == lines[1]["model"]["label"] == "random-tiny_p8"
    assert lines[0]["model"]["id"] != lines[1]["model"]["id"] and lines[0]["model"] == lines[2]["model"]
    assert lines[1]["metrics"]["text_to_image.R@1"] == last["metrics"]["text_to_image"]["R@1"]
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path), "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["model", "retrieval/image_to_text.R@1", "retrieval/text_to_image.R@1", "zero-shot/top1"]
    rows = {row[0]: row[1:] for row in table[1:]}
    seed1 = f"random-tiny_p8 ({lines[1]['model']['id']})"
    assert len(rows) == 2 and float(rows[seed1][1]) == last["metrics"]["text_to_image"]["R@1"]
    assert rows[seed1][2] == ""  # seed 1 never ran zero-shot
    assert cli.main(["compare", str(tmp_path / "retrieval.json"), str(tmp_path / "zero-shot.json")]) == 0
    markdown = capsys.readouterr().out.splitlines()  # the result JSONs give the same models
    assert markdown[0] == "| model | retrieval/image_to_text.R@1 | retrieval/text_to_image.R@1 | zero-shot/top1 |"
    assert len(markdown) == 2 + 2
