"""tips-serve against a real uvicorn on a free localhost port, with a tiny random model, random heads and a small
index (tests/serving.py): the official openai client and raw httpx get what the library computes in-process,
dynamic batching changes no result, every bad request answers its 4xx naming the field, overload and timeouts
answer 503, and the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import serving  # noqa: E402  (tests/serving.py)
from tips.serve import Limits, ServeOptions, create_app  # noqa: E402

NAME = "tiny-test"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    model = serving.tiny_model()
    served = serving.served(model, folder, NAME)
    options = ServeOptions(max_batch=8, max_wait_ms=20, max_queue=256, timeout_s=60)
    with serving.running(create_app(served, options)) as url:
        yield {"url": url, "model": model, "served": served, "folder": folder,
               "photos": sorted((folder / "photos").glob("*.png"))}


@pytest.fixture(scope="module")
def strict(setup):
    """A second server on the same model with small limits, a short queue and a short timeout."""
    limits = Limits(max_body_bytes=300_000, max_image_pixels=100 * 100, max_inputs=4, max_text_chars=50,
                    max_classes=3, max_k=5)
    app = create_app(setup["served"], ServeOptions(max_batch=4, max_wait_ms=1, max_queue=4, timeout_s=0.5,
                                                   limits=limits))
    with serving.running(app) as url:
        yield {"url": url, "app": app}


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def decode_array(body: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(body["data"]), dtype=body["dtype"]).reshape(body["shape"])


@torch.inference_mode()
def text_alone(model, text: str) -> np.ndarray:
    return serving.unit(model.encode_text([text]).float().numpy())[0]


@torch.inference_mode()
def image_alone(model, path, cls: str = "cls_alt") -> np.ndarray:
    from tips.index.queries import embed_images

    return embed_images(model, [Image.open(path)], model.image_size, cls)[0]


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------------------ embeddings
def test_the_openai_client_without_encoding_format_gets_the_in_process_embeddings(setup):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=setup["url"] + "/v1", api_key="unused", max_retries=0)
    texts = ["a cat on a sofa", "two dogs", "a very long sentence about a red bicycle leaning on a wall in Rome"]
    assert [m.id for m in client.models.list()] == [NAME]
    got = client.embeddings.create(model=NAME, input=texts)  # the client asks for base64 and decodes it
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == NAME and got.usage.prompt_tokens > 0
    for d, text in zip(got.data, texts):
        assert cosine(d.embedding, text_alone(setup["model"], text)) >= 0.9999
    photo = setup["photos"][0]
    got = client.embeddings.create(model=NAME, input=[{"image": data_url(photo)}], extra_body={"cls": "syn"})
    assert cosine(got.data[0].embedding, image_alone(setup["model"], photo, "cls_syn")) >= 0.9999


def test_httpx_with_float_gets_the_in_process_embeddings_of_texts_and_images(setup):
    photo = setup["photos"][1]
    body = {"model": NAME, "encoding_format": "float",
            "input": ["a cup of coffee", {"image": data_url(photo)}, {"text": "an astronaut"}]}
    r = httpx.post(setup["url"] + "/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "list" and [d["object"] for d in out["data"]] == ["embedding"] * 3
    m = setup["model"]
    assert cosine(out["data"][0]["embedding"], text_alone(m, "a cup of coffee")) >= 0.9999
    assert cosine(out["data"][1]["embedding"], image_alone(m, photo)) >= 0.9999
    assert cosine(out["data"][2]["embedding"], text_alone(m, "an astronaut")) >= 0.9999


def test_a_server_in_bfloat16_or_int8_answers_what_the_library_computes_in_that_precision(setup):
    import copy

    import tips
    from tips.serve import ServedModel

    model, photo = setup["model"], setup["photos"][2]
    x = torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    bf16 = ServedModel(model, NAME, dtype="bfloat16").handlers()["image"](list(x))  # autocast on the worker
    with torch.inference_mode(), tips.autocast(model, "bfloat16"):
        want = torch.nn.functional.normalize(model.encode_image(x).cls_alt.float(), dim=-1).numpy()
    assert np.array_equal(np.stack([r["alt"] for r in bf16]), want)
    fp32 = ServedModel(model, NAME).handlers()["image"](list(x))
    assert not np.allclose(np.stack([r["alt"] for r in fp32]), want, atol=1e-6, rtol=0)  # bf16 really ran

    quantized = tips.quantize(copy.deepcopy(model), "int8")
    with serving.running(create_app(ServedModel(quantized, NAME))) as url:
        assert httpx.get(url + "/health", timeout=10).json()["precision"] == "int8"
        r = httpx.post(url + "/v1/embeddings", json={"input": [{"image": data_url(photo)}],
                                                     "encoding_format": "float"}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["data"][0]["embedding"]
    assert cosine(got, image_alone(quantized, photo)) >= 0.99999
    assert not np.allclose(got, image_alone(model, photo), atol=1e-6, rtol=0)
    assert httpx.get(setup["url"] + "/health", timeout=10).json()["precision"] == "float32"


def test_dimensions_truncates_to_the_first_dimensions_and_renormalises(setup):
    r = httpx.post(setup["url"] + "/v1/embeddings", json={"input": "a red car", "dimensions": 48}, timeout=60)
    v = np.asarray(r.json()["data"][0]["embedding"])
    full = text_alone(setup["model"], "a red car")
    assert v.shape == (48,) and abs(np.linalg.norm(v) - 1) < 1e-5
    np.testing.assert_allclose(v, full[:48] / np.linalg.norm(full[:48]), atol=1e-5)


# ------------------------------------------------------------------------------------------------ dense, search
@pytest.mark.parametrize("task,channels", [("depth", 1), ("normals", 3), ("segmentation", None)])
def test_each_dense_endpoint_answers_at_the_inputs_size(setup, task, channels):
    photo = setup["photos"][0]
    w, h = Image.open(photo).size
    r = httpx.post(f"{setup['url']}/v1/{task}", json={"image": data_url(photo)}, timeout=60)
    assert r.status_code == 200, r.text
    values = decode_array(r.json())
    assert values.shape == ((channels, h, w) if channels else (h, w))
    if task == "depth":  # the model-resolution output resized to the photo's: its mean barely moves
        from tips.inference.uploads import square_tensor

        head, model = setup["served"].heads[task], setup["model"]
        with torch.inference_mode():
            alone = head.predict(model, square_tensor(Image.open(photo).convert("RGB"), model.image_size, 14)[None])[0]
        assert abs(values.mean() - alone.mean().item()) < 0.05 * abs(alone.mean().item()) + 1e-4
    if task == "normals":
        np.testing.assert_allclose(np.linalg.norm(values, axis=0), 1, atol=1e-4)
    png = httpx.post(f"{setup['url']}/v1/{task}", json={"image": data_url(photo), "format": "png"}, timeout=60)
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (w, h)


def test_open_vocab_equals_the_library_function(setup):
    from tips import open_vocab_segment

    photo, classes = setup["photos"][2], ["a cat", "a person", "sky"]
    r = httpx.post(setup["url"] + "/v1/open-vocab", json={"image": data_url(photo), "classes": classes}, timeout=60)
    assert r.status_code == 200, r.text
    expected = open_vocab_segment(setup["model"], Image.open(photo).convert("RGB"), classes)
    assert r.json()["classes"] == expected.class_names
    np.testing.assert_array_equal(decode_array(r.json()), expected.labels.numpy())
    # the PNG carries a legend: every class present, in the colour its pixels are drawn
    png = httpx.post(setup["url"] + "/v1/open-vocab", json={"image": data_url(photo), "classes": classes,
                                                            "format": "png"}, timeout=60)
    legend = json.loads(png.headers["x-tips-legend"])
    labels = expected.labels.numpy()
    names = expected.class_names + ["none of these"]
    assert {row["name"] for row in legend} == {names[min(int(i), len(names) - 1)] for i in np.unique(labels)}
    assert sum(row["share"] for row in legend) == pytest.approx(1.0, abs=1e-3)
    rgb = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    for row in legend:
        colour = tuple(int(row["colour"][k:k + 2], 16) for k in (1, 3, 5))
        share = (rgb == colour).all(-1).mean()
        assert share == pytest.approx(row["share"], abs=1e-3), row


def test_search_equals_the_python_index_search_for_text_and_image(setup):
    from tips.index import Index
    from tips.index.queries import embed_images, embed_texts, model_space

    model, index = setup["model"], Index.open(setup["folder"] / "index")
    space = model_space(model, NAME, "cls_alt")
    for body, query in [({"text": "a cat"}, embed_texts(model, ["a cat"])),
                        ({"image": data_url(setup["photos"][3])},
                         embed_images(model, [Image.open(setup["photos"][3])], model.image_size, "cls_alt"))]:
        r = httpx.post(setup["url"] + "/v1/search", json={**body, "k": 3}, timeout=60)
        assert r.status_code == 200, r.text
        expected = index.search(query, 3, space)
        hits = r.json()["hits"]
        assert [h["id"] for h in hits] == [row["id"] for row in expected.rows[0]]
        np.testing.assert_allclose([h["score"] for h in hits], expected.scores[0], atol=1e-5)
    r = httpx.post(setup["url"] + "/v1/search", json={"text": "a cat", "k": 2, "heatmaps": True}, timeout=60)
    grid = model.image_size // model.patch_size
    assert all(h["heatmap"]["shape"] == [grid, grid] for h in r.json()["hits"])


def test_a_region_index_answers_its_cells_with_heat_maps_and_refuses_image_queries(setup, tmp_path):
    from tips.cli.serve import served_index
    from tips.index import Index
    from tips.index.queries import embed_texts, model_space
    from tips.inference.regions import encode_regions, region_boxes
    from tips.inference.uploads import square_tensor
    from tips.serve import ServedModel

    model, photos, k = setup["model"], setup["photos"], 2
    images = torch.stack([square_tensor(Image.open(p).convert("RGB"), model.image_size, model.patch_size) for p in photos])
    vectors = encode_regions(model, images, k).reshape(-1, model.width).numpy()  # (N·k², D)
    grid = model.image_size // model.patch_size
    boxes = region_boxes(grid, grid, k).tolist()
    rows = {"id": [p.name for p in photos for _ in range(k * k)], "source": [str(p) for p in photos for _ in range(k * k)],
            "cell": [c for _ in photos for c in range(k * k)], "box": [boxes[c] for _ in photos for c in range(k * k)]}
    space = model_space(model, NAME, "region")
    Index.build(vectors, rows, space, max_memory=2**30).save(tmp_path / "regions")
    served = ServedModel(model, NAME, index=served_index(tmp_path / "regions", model, NAME))
    with serving.running(create_app(served)) as url:
        r = httpx.post(url + "/v1/search", json={"text": "a cat's face", "k": 4, "heatmaps": True}, timeout=60)
        expected = Index.open(tmp_path / "regions").search(embed_texts(model, ["a cat's face"]), 4, space)
        hits = r.json()["hits"]
        assert r.json()["kind"] == "region"
        assert [(h["id"], h["cell"]) for h in hits] == [(e["id"], e["cell"]) for e in expected.rows[0]]
        assert all(len(h["box"]) == 4 and h["heatmap"]["shape"] == [grid, grid] for h in hits)
        r = httpx.post(url + "/v1/search", json={"image": data_url(photos[0])}, timeout=60)
        assert r.status_code == 422 and r.json()["error"]["param"] == "image"


# ------------------------------------------------------------------------------------------------ batching
def test_200_requests_from_32_clients_equal_each_input_run_alone(setup):
    model, photos = setup["model"], setup["photos"]
    texts = [("word " * (1 + i % 13)).strip() + f" {i}" for i in range(40)]  # many lengths
    alone_text = {t: text_alone(model, t) for t in texts}
    alone_image = {p: image_alone(model, p) for p in photos}
    urls = {p: data_url(p) for p in photos}
    clients: dict[int, httpx.Client] = {}  # one connection per client thread

    def one(i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if i % 4 == 0:
            chosen = [photos[i % len(photos)]]
            body = {"input": [{"image": urls[p]} for p in chosen], "encoding_format": "float"}
            expected = [alone_image[p] for p in chosen]
        else:
            chosen = [texts[i % 40], texts[(i * 7) % 40], texts[(i * 3) % 40]]
            body, expected = {"input": chosen}, [alone_text[t] for t in chosen]
        client = clients.get(threading.get_ident())
        if client is None:
            client = clients[threading.get_ident()] = httpx.Client(timeout=120)
        r = client.post(setup["url"] + "/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        return [(np.asarray(d["embedding"]), e) for d, e in zip(r.json()["data"], expected)]

    before = batch_counts(setup["url"])
    with ThreadPoolExecutor(32) as pool:
        results = [pair for pairs in pool.map(one, range(200)) for pair in pairs]
    for client in clients.values():
        client.close()
    assert len(results) == 50 + 150 * 3
    for got, expected in results:
        assert cosine(got, expected) >= 0.99999 and np.abs(got - expected).max() <= 1e-5
    after = batch_counts(setup["url"])
    batches = after[1] - before[1]
    assert after[0] - before[0] == len(results) and batches < len(results)  # items did share forwards


def metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
            for s in f.samples}


def batch_counts(url: str) -> tuple[float, float]:
    """(items, forwards) of text and image embeddings so far."""
    m = metrics(url)
    items = sum(v for (n, labels), v in m.items() if n == "tips_batch_size_sum" and dict(labels)["kind"] in ("text", "image"))
    forwards = sum(v for (n, labels), v in m.items() if n == "tips_batch_size_count" and dict(labels)["kind"] in ("text", "image"))
    return items, forwards


def test_metrics_parse_and_count_this_tests_requests(setup):
    url = setup["url"]
    key = ("tips_requests_total", (("route", "/v1/embeddings"), ("status", "200")))
    bad = ("tips_requests_total", (("route", "/v1/embeddings"), ("status", "400")))
    before = metrics(url)
    for text in ("one", "two", "three"):
        httpx.post(url + "/v1/embeddings", json={"input": text}, timeout=60)
    httpx.post(url + "/v1/embeddings", content=b"{not json", timeout=60)
    after = metrics(url)
    assert after[key] - before.get(key, 0) == 3 and after[bad] - before.get(bad, 0) == 1
    latency = ("tips_request_seconds_count", (("route", "/v1/embeddings"),))
    assert after[latency] - before[latency] == 4
    assert ("tips_queue_depth", ()) in after


# ------------------------------------------------------------------------------------------------ errors
def _big_text_body() -> bytes:
    return b'{"input": "' + b"x" * 400_000 + b'"}'


BAD = [  # (body as JSON or raw bytes, status, the field the error names)
    (b"{bad json", 400, "body"),
    (b"[1, 2]", 422, "body"),
    ({"input": [{"image": "data:image/png;base64,aGVsbG8="}]}, 400, "input[0].image"),
    ({"input": [{"image": "data:image/png;base64,@@@"}]}, 400, "input[0].image"),
    ({"input": [{"image": "https://example.com/cat.png"}]}, 422, "input[0].image"),
    ({"input": "a cat", "model": "gpt-4"}, 400, "model"),
    ({"input": "a cat", "dimensions": 4096}, 422, "dimensions"),
    ({"input": "a cat", "dimensions": 0}, 422, "dimensions"),
    ({"input": "a cat", "encoding_format": "int8"}, 422, "encoding_format"),
    ({"input": "a cat", "temperature": 1}, 422, "temperature"),
    ({"input": [3.5]}, 422, "input[0]"),
    ({"input": []}, 422, "input"),
    ({"input": ["a", ""]}, 422, "input[1]"),
    (None, 413, "body"),  # _big_text_body
    ({"input": ["a"] * 5}, 413, "input"),
    ({"input": "x" * 51}, 413, "input"),
    ({"input": [{"text": "x" * 51}]}, 413, "input[0].text"),
    ("big-image", 413, "input[0].image"),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[f"{s}-{p}-{i}" for i, (_, s, p) in enumerate(BAD)])
def test_a_bad_request_answers_its_4xx_naming_the_field(strict, body, status, param):
    url = strict["url"] + "/v1/embeddings"
    if body == "big-image":
        body = {"input": [{"image": png_url(Image.new("RGB", (120, 100)))}]}
    if body is None:
        r = httpx.post(url, content=_big_text_body(), headers={"content-type": "application/json"}, timeout=30)
    elif isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and param.split("[")[0].split(".")[0] in error["message"]
    if status == 413:
        assert "--max-" in error["message"]  # the limit and the flag that raises it
    assert httpx.get(strict["url"] + "/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize("route,body,status,param", [
    ("/v1/depth", {"image": "not base64 !"}, 400, "image"),
    ("/v1/depth", {}, 422, "image"),
    ("/v1/open-vocab", {"image": "x", "classes": ["a", "b", "c", "d"]}, 413, "classes"),
    ("/v1/open-vocab", {"image": "x", "classes": []}, 422, "classes"),
    ("/v1/search", {"text": "a cat", "k": 50}, 422, "k"),
    ("/v1/search", {"text": "a", "image": "b"}, 422, "text"),
    ("/v1/search", {"text": " "}, 422, "text"),
    ("/v1/open-vocab", {"image": "x", "classes": ", ,|"}, 422, "classes"),
    ("/v1/open-vocab", {"image": "x", "classes": ["a", 1]}, 422, "classes[1]"),
    ("/v1/images/99", None, 404, "row"),
])
def test_the_other_routes_name_the_field_too(strict, route, body, status, param):
    r = (httpx.get(strict["url"] + route, timeout=30) if body is None else
         httpx.post(strict["url"] + route, json=body, timeout=30))
    assert r.status_code == status and r.json()["error"]["param"] == param, r.text


def test_a_full_queue_and_a_slow_forward_answer_503_then_the_server_serves_again(strict):
    server = strict["app"].state.server
    release = threading.Event()
    server.batcher.handlers["block"] = lambda items: [release.wait(30) for _ in items]
    blocker = server.batcher.submit("block", "block", [0])  # the worker is now busy
    time.sleep(0.1)
    try:
        queued = server.batcher.submit("block", "block", [1, 2, 3])  # the queue (4) is nearly full
        r = httpx.post(strict["url"] + "/v1/embeddings", json={"input": ["a", "b"]}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
        r = httpx.post(strict["url"] + "/v1/embeddings", json={"input": "a"}, timeout=30)  # fits, then times out
        assert r.status_code == 503 and r.json()["error"]["code"] == "timeout" and "--timeout-s" in r.text
    finally:
        release.set()
    for f in [*blocker, *queued]:
        f.result(10)
    r = httpx.post(strict["url"] + "/v1/embeddings", json={"input": "a"}, timeout=30)
    assert r.status_code == 200 and httpx.get(strict["url"] + "/health").json()["queue"] == 0


# ------------------------------------------------------------------------------------------------ batcher alone
def test_a_request_larger_than_max_batch_is_split_and_the_wait_starts_at_the_first_item():
    from tips.serve import Batcher

    sizes, started = [], time.monotonic()
    batcher = Batcher({"x": lambda items: (sizes.append((len(items), time.monotonic() - started)) or items)},
                      max_batch=4, max_wait_s=0.3, max_queue=100)
    batcher.start()
    try:
        assert [f.result(5) for f in batcher.submit("x", "g", list(range(10)))] == list(range(10))
        assert [n for n, _ in sizes] == [4, 4, 2] and sizes[2][1] >= 0.29  # the rest waited for company
        sizes.clear()
        started = time.monotonic()
        first = batcher.submit("x", "g", ["a"])
        time.sleep(0.15)
        second = batcher.submit("x", "g", ["b"])
        assert first[0].result(5) == "a" and second[0].result(5) == "b"
        assert sizes == [(2, pytest.approx(0.3, abs=0.12))]  # one batch, due 0.3 s after the *first* item
    finally:
        batcher.stop()


# ------------------------------------------------------------------------------------------------ the page, in Chromium
def chromium_driver():
    """Headless Chromium from the distribution's packages; under CI=true a missing browser fails the test."""
    import os
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        message = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_searches_by_text_and_shows_dense_results_of_an_upload_in_a_real_browser(setup):
    from pathlib import Path

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    screens = Path(__file__).resolve().parents[1] / "screens"
    screens.mkdir(exist_ok=True)
    driver = chromium_driver()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(setup["url"] + "/")
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), NAME))
        assert driver.find_element(By.ID, "status").text.endswith("· float32")
        driver.save_screenshot(str(screens / "1-loaded.png"))
        driver.find_element(By.ID, "search-text").send_keys("a cat")
        driver.find_element(By.ID, "search-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "search-note"), "hits"))
        hits = driver.find_elements(By.CSS_SELECTOR, "#search-results figure.hit")
        assert len(hits) == 5  # every image of the index, best first
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                                 for img in d.find_elements(By.CSS_SELECTOR, "#search-results img")))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#search-results canvas.heat")) == 5
        captions = [h.find_element(By.TAG_NAME, "figcaption").text for h in hits]
        assert all(c.split()[1].endswith(".png") for c in captions)
        driver.save_screenshot(str(screens / "2-text-search.png"))

        driver.find_element(By.ID, "image-file").send_keys(str(setup["photos"][0]))
        wait.until(ec.text_to_be_present_in_element((By.ID, "image-note"), "done"))
        tasks = {img.get_attribute("data-task"): img for img in
                 driver.find_elements(By.CSS_SELECTOR, "#dense-results img.result")}
        assert set(tasks) == {"input", "depth", "normals", "segmentation", "open-vocab"}
        w, h = Image.open(setup["photos"][0]).size
        for task, img in tasks.items():  # each a decoded picture at the input's size
            wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
            assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [w, h]
        legends = driver.find_elements(By.CSS_SELECTOR, "#dense-results ul.legend")
        assert len(legends) == 2 and all(lg.find_elements(By.TAG_NAME, "li") for lg in legends)  # seg + open-vocab
        driver.execute_script("document.getElementById('image-panel').scrollIntoView()")
        driver.save_screenshot(str(screens / "3-image-upload.png"))

        # a file dropped on the drop zone (a real DragEvent carrying a 40x30 PNG made in the page) is predicted too
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const canvas = document.createElement("canvas");
            canvas.width = 40; canvas.height = 30;
            canvas.getContext("2d").fillRect(0, 0, 20, 30);
            canvas.toBlob((blob) => {
              const data = new DataTransfer();
              data.items.add(new File([blob], "dropped.png", {type: "image/png"}));
              document.getElementById("drop").dispatchEvent(
                new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
              done();
            }, "image/png");""")

        def dropped_results(d) -> bool:
            imgs = d.find_elements(By.CSS_SELECTOR, "#dense-results img.result")
            sizes = [d.execute_script("return arguments[0].complete ? [arguments[0].naturalWidth, "
                                      "arguments[0].naturalHeight] : null", img) for img in imgs]
            return len(imgs) == 5 and all(size == [40, 30] for size in sizes)
        wait.until(dropped_results)
        assert driver.find_element(By.ID, "image-note").text.startswith("done")
    finally:
        driver.quit()


# ------------------------------------------------------------------------------------------------ docs/serving.md
SERVER_MARK = "<!-- not run: needs a running server (tests/test_serve.py runs this block against one) -->"


def served_examples() -> list[tuple[str, str]]:
    """(language, code) of every block of docs/serving.md marked as needing a running server."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in re.finditer(re.escape(SERVER_MARK) + r"\n```(bash|python)\n(.*?)^```",
                                                           text, re.S | re.M)]


def test_the_serving_docs_examples_run_against_the_server(setup, tmp_path, monkeypatch):
    import contextlib
    import subprocess

    examples = served_examples()
    assert {lang for lang, _ in examples} == {"bash", "python"} and len(examples) >= 5
    Image.open(setup["photos"][0]).convert("RGB").save(tmp_path / "photo.jpg")
    host = setup["url"].removeprefix("http://")
    monkeypatch.chdir(tmp_path)
    for lang, code in examples:
        code = code.replace("127.0.0.1:8000", host).replace("tips-v2-b14", NAME)
        if lang == "bash":
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0 and '"error"' not in out.stdout, (code, out.stdout[-500:], out.stderr[-500:])
        else:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, "docs/serving.md", "exec"), {})
            assert printed.getvalue().strip(), code
    assert Image.open(tmp_path / "depth.png").size == Image.open(tmp_path / "photo.jpg").size


@pytest.mark.slow  # a fresh Python that imports torch and builds a model: ~10 s on 2 cores
def test_the_tips_serve_command_serves_until_interrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port = serving.free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "tips.cli.serve", "--random-init", "tiny", "--random-head", "depth",
                             "--port", str(port), "--max-batch", "1", "--quantize", "int8"], env=env,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                health = httpx.get(url + "/health", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
                time.sleep(0.5)
        assert health["model"] == "random-init:tiny:seed=0" and health["heads"] == ["depth"] and health["random_weights"]
        assert health["precision"] == "int8"
        r = httpx.post(url + "/v1/embeddings", json={"input": "a cat", "model": health["model"]}, timeout=60)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == health["width"]
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0 and "Traceback" not in err, err
