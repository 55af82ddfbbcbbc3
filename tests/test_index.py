"""tips.index: the factory that fits a memory budget, exact and tuned search, growth by add, one embedding space."""

import json

import numpy as np
import pytest

from tips.index import EmbeddingSpace, Index, SpaceMismatchError, parse_memory, plan_index

pytest.importorskip("faiss", reason="the index extra (faiss-cpu) is part of the test extra")

SPACE = EmbeddingSpace(model="tiny", fingerprint="aaaa", kind="cls_alt", width=32)


def clustered(n: int, d: int = 32, centres: int = 40, sigma: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    return (c[rng.integers(0, centres, n)] + sigma * rng.standard_normal((n, d))).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n, d, budget, factory", [
    (1000, 64, 256_000, "Flat"),  # 1000·64·4 bytes fit exactly
    (1000, 64, 100_000, "IVF25,SQ8"),  # nlist = min(4·√1000 = 126, 1000 // 39 = 25); 1000·72 + 25·256 = 78,400
    (100_000, 64, 5 * 2**20, "OPQ32,IVF1264,PQ32"),  # SQ8 needs 7.5 MB; PQ32: 4.0 MB + 0.3 MB cells + 80 KB OPQ/PQ
])
def test_the_most_exact_factory_that_fits_the_budget_is_chosen(n, d, budget, factory):
    plan = plan_index(n, d, budget)
    assert plan.factory == factory and plan.bytes_estimate <= budget


def test_a_budget_too_small_for_any_index_says_how_much_is_needed():
    with pytest.raises(ValueError, match="--max-memory"):
        plan_index(1000, 64, 50_000)
    assert parse_memory("1GB") == 2**30 and parse_memory("512mb") == 512 * 2**20
    with pytest.raises(ValueError, match="1GB"):
        parse_memory("lots")


def test_flat_search_equals_brute_force_and_names_the_rows():
    x = clustered(300)
    index = Index.build(x, {"id": [f"img{i}" for i in range(300)]}, SPACE, max_memory=2**30)
    assert index.info["factory"] == "Flat" and index.info["nprobe"] is None
    result = index.search(x[:5], 4, SPACE)
    exact = np.argsort(-(unit(x[:5]) @ unit(x).T), axis=1)[:, :4]
    assert [[h["row"] for h in hits] for hits in result.rows] == exact.tolist()
    assert [hits[0]["id"] for hits in result.rows] == [f"img{i}" for i in range(5)]
    assert np.allclose(result.scores[:, 0], 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def ivf(tmp_path_factory):
    x = clustered(4000)
    folder = tmp_path_factory.mktemp("ivf") / "index"
    rows = {"id": [f"img{i}" for i in range(4000)], "source": [f"/photos/{i}.jpg" for i in range(4000)]}
    # Flat needs 512 KB and SQ8 ~300 KB: a 400 KB budget forces the quantised index
    Index.build(x, rows, SPACE, max_memory=400_000, recall_target=0.9, sample=200).save(folder)
    return x, folder


def test_an_approximate_index_tunes_nprobe_to_the_recall_target_and_records_it(ivf):
    x, folder = ivf
    info = json.loads((folder / "index.json").read_text())
    assert info["factory"].endswith(",SQ8") and info["count"] == 4000
    assert info["tuning"][-1]["nprobe"] == info["nprobe"] and info["tuning"][-1]["recall"] >= 0.9
    assert all(t["recall"] < 0.9 for t in info["tuning"][:-1])  # the smallest nprobe that reaches it
    index = Index.open(folder)
    assert index.info["nprobe"] == info["nprobe"]
    hits = index.search(x[:50], 1, SPACE).rows
    assert sum(h[0]["id"] == f"img{i}" for i, h in enumerate(hits)) >= 48  # each vector finds itself


def test_add_keeps_the_old_rows_results_and_finds_the_new_ones(ivf, tmp_path):
    x, folder = ivf
    before = Index.open(folder).search(x[:20], 3, SPACE)
    grown = Index.open(folder)
    new = clustered(100, seed=1)  # other cluster centres in the same range: far from the old rows in 32-d
    grown.add(new, {"id": [f"new{i}" for i in range(100)], "source": ["/new.jpg"] * 100}, SPACE)
    grown.save(tmp_path / "grown")
    after = Index.open(tmp_path / "grown")
    assert len(after) == 4100 and after.info["count"] == 4100
    again = after.search(x[:20], 3, SPACE)
    assert [[h["id"] for h in r] for r in again.rows] == [[h["id"] for h in r] for r in before.rows]
    assert np.array_equal(again.scores, before.scores)
    found = after.search(new[:20], 3, SPACE).rows
    assert all(h[0]["id"].startswith("new") for h in found)
    assert sum(f"new{i}" in [x["id"] for x in h] for i, h in enumerate(found)) >= 19  # 8-bit codes may swap twins


def test_a_query_from_another_model_or_kind_is_refused_naming_both(ivf):
    x, folder = ivf
    index = Index.open(folder)
    other = EmbeddingSpace(model="b14", fingerprint="bbbb", kind="cls_alt", width=32)
    with pytest.raises(SpaceMismatchError, match=r"tiny \(weights aaaa\).*b14 \(weights bbbb\)"):
        index.search(x[:1], 1, other)
    with pytest.raises(SpaceMismatchError, match="cls_syn"):
        index.search(x[:1], 1, EmbeddingSpace(model="tiny", fingerprint="aaaa", kind="cls_syn", width=32))


def test_a_folder_that_is_not_a_whole_index_is_refused_by_name(ivf, tmp_path):
    _, folder = ivf
    with pytest.raises(FileNotFoundError, match="no index.json, index.faiss, rows.parquet"):
        Index.open(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("index.faiss", "rows.parquet"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json: not JSON"):
        Index.open(broken)


def test_zero_or_non_finite_vectors_are_refused_with_their_row():
    x = clustered(10)
    x[3] = 0
    with pytest.raises(ValueError, match="row 3"):
        Index.build(x, {"id": list(range(10))}, SPACE, max_memory=2**30)


# --------------------------------------------------------------------------- tips-index and tips-search on photos
@pytest.fixture(scope="module")
def photo_features(tmp_path_factory):
    """Six scikit-image photos extracted by a random tiny model (the index's model)."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from tips.cli.extract import main as extract_main

    root = tmp_path_factory.mktemp("photos")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field"):
        Image.fromarray(getattr(skdata, name)()).save(photos / f"{name}.png")
    out = root / "features"
    assert extract_main([str(photos), "-o", str(out), "--random-init", "tiny", "--no-progress"]) == 0
    return root, photos, out


def test_index_then_search_finds_a_resized_reencoded_copy_and_refuses_another_model(photo_features, capsys):
    from PIL import Image

    from tips.cli.index import main as index_main
    from tips.cli.search import main as search_main

    root, photos, features = photo_features
    index_dir = root / "index"
    assert index_main([str(features), "-o", str(index_dir)]) == 0
    assert "indexed 6 cls_alt vectors" in capsys.readouterr().out
    copy = root / "chelsea-copy.jpg"  # smaller, re-encoded as JPEG: a near-duplicate, not the same bytes
    Image.open(photos / "chelsea.png").resize((226, 150)).save(copy, quality=80)
    hits, sheet = root / "hits" / "hits.json", root / "hits" / "hits.png"
    assert search_main(["--index", str(index_dir), "--random-init", "tiny", "--image", str(copy), "--query",
                        "a cat", "-k", "3", "-o", str(root / "hits")]) == 0
    report = json.loads(hits.read_text())
    assert [r["query"] for r in report] == ["a cat", "image: chelsea-copy.jpg"]
    assert report[1]["hits"][0]["id"] == "chelsea.png" and report[1]["hits"][0]["score"] > 0.9
    assert all(len(r["hits"]) == 3 for r in report)
    assert index_main([str(features), "-o", str(root / "index96"), "--dims", "96"]) == 0  # Matryoshka: half the width
    assert search_main(["--index", str(root / "index96"), "--random-init", "tiny", "--image", str(copy), "-k", "1",
                        "-o", str(root / "hits96")]) == 0
    assert json.loads((root / "hits96" / "hits.json").read_text())[0]["hits"][0]["id"] == "chelsea.png"
    assert Index.open(root / "index96").space.truncated_from == 192
    picture = Image.open(sheet)
    assert picture.size[1] > 2 * 160  # two query rows of thumbnails
    capsys.readouterr()
    assert search_main(["--index", str(index_dir), "--random-init", "tiny", "--seed", "1", "--query", "a cat"]) == 1
    err = capsys.readouterr().err
    assert "random-init:tiny:seed=0" in err and "random-init:tiny:seed=1" in err and len(err.strip().splitlines()) == 1


def test_index_add_appends_only_new_ids_and_a_second_build_needs_force(photo_features, tmp_path, capsys):
    from tips.cli.index import main as index_main

    _, _, features = photo_features
    out = tmp_path / "index"
    assert index_main([str(features), "-o", str(out)]) == 0
    assert index_main([str(features), "-o", str(out)]) == 1
    assert "--add" in capsys.readouterr().err
    assert index_main([str(features), "-o", str(out), "--add"]) == 0
    assert "added 0 of 6 rows (6 already there)" in capsys.readouterr().out
    assert len(Index.open(out)) == 6


# --------------------------------------------------------------------------- regions
def test_region_vectors_equal_an_independent_mean_over_each_cell_then_normalise():
    import torch

    from tips.inference.regions import region_boxes, region_vectors

    patches = torch.randn(2, 7, 5, 16, generator=torch.Generator().manual_seed(0))
    got = region_vectors(patches, 3)
    rows, cols = [0, 2, 5, 7], [0, 2, 3, 5]  # round(i·7/3), round(i·5/3): cells of 2-3 patches
    for b in range(2):
        for i in range(3):
            for j in range(3):
                cell = patches[b, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].reshape(-1, 16).numpy().astype(np.float64)
                mean = cell.sum(0) / len(cell)
                assert np.allclose(got[b, 3 * i + j].numpy(), mean / np.linalg.norm(mean), atol=1e-5)
    assert region_boxes(7, 5, 3)[4].tolist() == pytest.approx([2 / 5, 2 / 7, 3 / 5, 5 / 7])
    with pytest.raises(ValueError, match="--regions"):
        region_vectors(patches, 6)


def test_a_planted_region_is_the_first_text_to_region_hit_with_its_box(photo_features, tmp_path, capsys):
    import torch

    from tips.cli.search import main as search_main
    from tips.index.queries import embed_texts, model_space
    from tips.inference.loaded import build_model
    from tips.inference.regions import encode_regions, region_boxes
    from tips.models.preprocess import Preprocess
    from PIL import Image

    _, photos, _ = photo_features
    loaded = build_model(None, "tiny", None, None, 0)
    model, k = loaded.model, 2
    names = sorted(p.name for p in photos.iterdir())
    size = model.image_size
    batch = torch.stack([Preprocess(size, model.patch_size)(Image.open(photos / n).convert("RGB")) for n in names])
    vectors = encode_regions(model, batch, k).reshape(-1, model.width).numpy().copy()
    boxes = region_boxes(size // model.patch_size, size // model.patch_size, k).tolist()
    rows = {"id": [n for n in names for _ in range(k * k)], "source": [str(photos / n) for n in names for _ in range(k * k)],
            "cell": [c for _ in names for c in range(k * k)]}
    rows |= {name: [b[i] for _ in names for b in boxes] for i, name in enumerate(("x0", "y0", "x1", "y1"))}
    planted = names.index("rocket.png") * k * k + 3  # the rocket's bottom-right cell
    vectors[planted] = embed_texts(model, ["a planted query"])[0]
    Index.build(vectors, rows, model_space(model, loaded.name, "region"), max_memory=2**30).save(tmp_path / "regions")
    hits, sheet = tmp_path / "hits" / "hits.json", tmp_path / "hits" / "hits.png"
    assert search_main(["--index", str(tmp_path / "regions"), "--random-init", "tiny", "--query", "a planted query",
                        "-k", "3", "-o", str(tmp_path / "hits")]) == 0
    top = json.loads(hits.read_text())[0]["hits"][0]
    assert (top["id"], top["cell"]) == ("rocket.png", 3) and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert [top["x0"], top["y0"], top["x1"], top["y1"]] == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert Image.open(sheet).size[0] >= 3 * 160
    assert search_main(["--index", str(tmp_path / "regions"), "--random-init", "tiny", "--image",
                        str(photos / "rocket.png")]) == 2  # a usage mistake
    assert "region index" in capsys.readouterr().err
