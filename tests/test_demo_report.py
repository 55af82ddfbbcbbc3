"""The demo's table: honest readings computed from the numbers, the results.json schema, the picture page."""

import json

import pytest
from PIL import Image

from tips_eval.demo_picture import dense_page
from tips_eval.demo_report import METRICS, chance_rate, markdown_table, rate_se, reading, summarise, write_results


def test_rate_difference_needs_more_than_two_standard_errors():
    se = rate_se(20.0, 10.0, 64)  # sqrt((.2*.8 + .1*.9) / 64) = 6.25 %
    assert se == pytest.approx(6.25)
    assert reading(30.0, 10.0, True, se=se)[0] == "trained"  # +20 > 12.5
    verdict, text = reading(20.0, 10.0, True, se=se)  # +10 < 12.5: not a result at 64 queries
    assert verdict == "none" and text.startswith("no clear difference at demo scale")
    assert reading(2.0, 25.0, True, se=rate_se(2.0, 25.0, 64))[0] == "random"


def test_lower_is_better_scores_use_a_relative_margin_and_say_they_have_no_error_bar():
    verdict, text = reading(1.80, 2.00, False)  # 10 % lower RMSE: better
    assert verdict == "trained" and "no error bar" in text
    assert reading(1.95, 2.00, False)[0] == "none"  # 2.5 %: inside the 5 % band
    assert reading(0.004, 0.003, True, floor=0.01)[0] == "none"  # +33 % of almost nothing is below the floor
    verdict, text = reading(2.39, 1.876, False)  # the all-pixel depth: trained worse
    assert verdict == "random" and "did not help" in text
    assert "chance 25.0" in reading(50.0, 25.0, True, se=1.0, chance=25.0)[1]


def test_a_constant_answer_that_beats_a_worse_random_tower_is_not_called_a_gain():
    # 8 images, 4 of them cubes: a model answering "cube" always scores 50 %, the random tower's constant 0 %.
    confusion = [[0, 0, 0, 0], [0, 4, 0, 0], [0, 2, 0, 0], [0, 2, 0, 0]]
    assert chance_rate(confusion) == 50.0 and chance_rate(64) == pytest.approx(100 / 64)
    verdict, text = reading(50.0, 0.0, True, se=rate_se(50.0, 0.0, 8), chance=50.0, queries=8)
    assert verdict == "none" and "not clearly above chance" in text
    assert reading(90.0, 20.0, True, se=rate_se(90.0, 20.0, 60), chance=30.0, queries=60)[0] == "trained"


def _results(t2i, i2t, top1, miou, rmse):
    return {
        "retrieval": {"metrics": {"text_to_image": {"R@1": t2i}, "image_to_text": {"R@1": i2t},
                                  "num_images": 64, "num_captions": 64}},
        "zero-shot": {"metrics": {"top1": top1, "num_images": 60, "num_classes": 4,
                                  "confusion_matrix": [[15, 0, 0, 0]] * 4}},
        "segmentation": {"metrics": {"miou_subset": miou}},
        "depth": {"metrics": {"objects": {"rmse": rmse}}},
    }


def test_summary_rows_and_results_json_schema(tmp_path):
    rows = summarise({"trained": _results(40.0, 35.0, 50.0, 0.30, 1.0), "random": _results(1.6, 1.6, 48.0, 0.29, 1.5)})
    assert list(rows) == [m.key for m in METRICS]
    assert rows["text_to_image_r1"]["verdict"] == "trained" and "chance 1.6" in rows["text_to_image_r1"]["reading"]
    assert rows["zero_shot_top1"]["verdict"] == "none"  # 50 vs 48 % on 60 images is noise
    assert rows["object_miou"]["verdict"] == "none" and rows["object_depth_rmse"]["verdict"] == "trained"
    path = write_results(tmp_path / "results.json", rows, {"seed": 0})
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["seed"] == 0
    for key, row in data["metrics"].items():
        assert {"trained", "random", "higher_is_better", "reading"} <= set(row), key
        assert isinstance(row["trained"], float) and isinstance(row["higher_is_better"], bool)
    assert data["metrics"]["object_depth_rmse"]["higher_is_better"] is False
    table = markdown_table(rows)
    assert "| text→image R@1 (%), synthetic captions | ↑ | 40.0 | 1.6 | pretraining helps" in table
    assert "| object-pixel depth RMSE (m) | ↓ | 1.000 | 1.500 |" in table


def test_a_missing_metric_names_the_task_and_the_model():
    broken = _results(1.0, 1.0, 1.0, 0.1, 1.0)
    del broken["depth"]["metrics"]["objects"]
    with pytest.raises(KeyError, match=r"depth \(random\): no metric objects.rmse"):
        summarise({"trained": _results(1.0, 1.0, 1.0, 0.1, 1.0), "random": broken})


def test_dense_page_puts_trained_beside_random_per_task(tmp_path):
    pictures = {}
    for task in ("segmentation", "depth"):
        for label, colour in (("trained", "red"), ("random", "blue")):
            pictures[(task, label)] = tmp_path / f"{task}-{label}.png"
            Image.new("RGB", (50, 30), colour).save(pictures[(task, label)])
    page = Image.open(dense_page(pictures, tmp_path / "page.png"))
    assert page.size == (100, 2 * (30 + 40))
    assert page.getpixel((10, 50)) == (255, 0, 0) and page.getpixel((60, 50)) == (0, 0, 255)
