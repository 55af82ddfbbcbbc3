"""The HTTP routes of ``tips-serve``: :func:`create_app` builds a FastAPI app around a :class:`ServedModel`.

``POST /v1/embeddings`` and ``GET /v1/models`` (OpenAI-compatible), ``/v1/depth`` ``/v1/normals`` ``/v1/segmentation`` (the DPT heads
given at start), ``/v1/open-vocab``, ``/v1/search`` (with ``--index``), ``GET /v1/images/{row}`` (an indexed
image, for the page), ``GET /health``, ``GET /metrics``, and the page at ``/``. Every forward runs on the one
worker thread of :mod:`.batching`; every refusal is an :class:`.limits.ApiError` (docs/serving.md lists them).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..formats.optional import require
from ..inference.images import MAX_RESIZED_PIXELS
from ..inference.open_vocab import parse_classes
from ..inference.pictures import class_names
from ..inference.uploads import UploadError, decode_upload, square_tensor
from .batching import Batcher, QueueFull
from .codec import (array_body, b64_array, check_text, image_from_field, legend_header, png_bytes, thumbnail_jpeg,
                    to_input_size)
from .forwards import DENSE_TASKS, ServedModel
from .limits import ApiError, ServeOptions, too_large
from .metrics import Metrics

# fastapi (with pydantic, which it is built on) is the serve extra: imported here, with the install command if absent
_fastapi = require("fastapi", "tips-serve", extra="serve")
_responses = require("fastapi.responses", "tips-serve", extra="serve")
_pydantic = require("pydantic", "tips-serve", extra="serve")
FastAPI, Request = _fastapi.FastAPI, _fastapi.Request
RequestValidationError = require("fastapi.exceptions", "tips-serve", extra="serve").RequestValidationError
run_in_threadpool = require("fastapi.concurrency", "tips-serve", extra="serve").run_in_threadpool
FileResponse, JSONResponse, Response = _responses.FileResponse, _responses.JSONResponse, _responses.Response
BaseModel, ConfigDict, ValidationError = _pydantic.BaseModel, _pydantic.ConfigDict, _pydantic.ValidationError

PAGE = Path(__file__).parent / "page"
LEGEND_HEADER = "X-Tips-Legend"  # a class PNG's classes and colours, for the page's legend (codec.legend_header)
ROUTES = ("/v1/models", "/v1/embeddings", "/v1/depth", "/v1/normals", "/v1/segmentation", "/v1/open-vocab", "/v1/search",
          "/v1/images", "/health", "/metrics", "/")


# ---------------------------------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(_Body):
    """OpenAI's fields, plus ``cls``: which image CLS embeds an image (``alt``: CLS1, trained against alt-text;
    ``syn``: CLS2, trained against synthetic captions; texts embed in one space that both face)."""

    input: str | list[Any]
    model: str | None = None
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    cls: Literal["alt", "syn"] = "alt"


class DenseRequest(_Body):
    image: str
    model: str | None = None
    format: Literal["array", "png"] = "array"


class OpenVocabRequest(DenseRequest):
    classes: list[str] | str


class SearchRequest(_Body):
    text: str | None = None
    image: str | None = None
    k: int | None = None  # default: 10, or --max-k when smaller
    model: str | None = None
    heatmaps: bool = False


# ---------------------------------------------------------------------------------------------- the app
class Server:
    """The state the routes share: the model, the batcher (one worker thread), the metrics, the options."""

    def __init__(self, served: ServedModel, options: ServeOptions) -> None:
        self.served, self.options, self.limits = served, options, options.limits
        self.metrics = Metrics()
        self.batcher = Batcher(served.handlers(), max_batch=options.max_batch, max_wait_s=options.max_wait_ms / 1000,
                               max_queue=options.max_queue, per_kind_max={"open_vocab": 1},
                               observe_batch=self.metrics.observe_batch, queue_depth=self.metrics.queue_depth.set)

    # -------------------------------------------------------------------------------- helpers
    async def read(self, request: Request, schema: type[BaseModel]) -> Any:
        """The body, under the size limit, as JSON, validated against ``schema``; 400 / 413 / 422 naming the field."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, f"Content-Length {declared!r} is not a number", "body", "invalid_body")
            if int(declared) > limit:
                raise too_large("body", int(declared), limit, "bytes", "--max-body-bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large("body", len(body), limit, "bytes (at least)", "--max-body-bytes")
        try:
            data = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"body: not valid JSON ({str(e)[:120]})", "body", "invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(422, f"body: expected a JSON object, got {type(data).__name__}", "body", "invalid_type")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            param = _param([p for p in first["loc"] if not str(p).startswith(("str", "list", "literal"))]) or "body"
            message = f"{param}: {first['msg']}" + (f" (unknown field; known: {', '.join(schema.model_fields)})"
                                                    if first["type"] == "extra_forbidden" else "")
            raise ApiError(422, message, param, "invalid_value") from None

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served.name:
            raise ApiError(400, f"model: {name!r} is not served here; this server serves {self.served.name!r}",
                           "model", "model_not_found")

    def submit(self, kind: str, group: Any, payloads: Sequence[Any]) -> list[Future]:
        if len(payloads) > self.options.max_queue:
            raise too_large("input", len(payloads), self.options.max_queue, "items (the whole queue)", "--max-queue")
        try:
            return self.batcher.submit(kind, group, payloads)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy ({e}); retry after a second", None, "queue_full",
                           {"Retry-After": "1"}) from None

    async def wait(self, futures: list[Future], started: float) -> list[Any]:
        """The items' results, or 503 (and the items dropped from the queue) past the request's time limit."""
        left = self.options.timeout_s - (time.monotonic() - started)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                               max(left, 0.0)))
        except asyncio.TimeoutError:
            for f in futures:
                f.cancel()
            raise ApiError(503, f"the request took longer than {self.options.timeout_s:g} s (tips-serve --timeout-s); "
                           "retry later", None, "timeout", {"Retry-After": "1"}) from None

    async def image(self, value: object, param: str):
        return await run_in_threadpool(image_from_field, value, param, self.limits.max_image_pixels)

    def model_tensor(self, image, resolution: int | None = None):
        m = self.served.model
        return square_tensor(image, resolution or m.image_size, m.patch_size)

    # -------------------------------------------------------------------------------- routes
    async def embeddings(self, request: Request) -> JSONResponse:
        started = time.monotonic()
        body: EmbeddingsRequest = await self.read(request, EmbeddingsRequest)
        self.check_model(body.model)
        width = self.served.model.width
        if body.dimensions is not None and not 1 <= body.dimensions <= width:
            raise ApiError(422, f"dimensions: {body.dimensions} is outside 1..{width} (the model's width)",
                           "dimensions", "invalid_value")
        items = [body.input] if isinstance(body.input, str) else body.input
        if not items:
            raise ApiError(422, "input: give at least one text or image", "input", "invalid_value")
        if len(items) > self.limits.max_inputs:
            raise too_large("input", len(items), self.limits.max_inputs, "items", "--max-inputs")
        texts: list[tuple[int, str]] = []
        images: list[tuple[int, Any]] = []
        for i, item in enumerate(items):
            param = "input" if isinstance(body.input, str) else f"input[{i}]"
            if isinstance(item, dict) and set(item) == {"text"}:
                texts.append((i, check_text(item["text"], f"{param}.text", self.limits.max_text_chars)))
            elif isinstance(item, dict) and set(item) == {"image"}:
                images.append((i, item["image"]))
            elif isinstance(item, str):
                texts.append((i, check_text(item, param, self.limits.max_text_chars)))
            else:
                raise ApiError(422, f"{param}: expected a string, {{\"text\": ...}} or {{\"image\": \"data:image/..."
                               "\"}", param, "invalid_value")
        decoded = [await self.image(value, f"input[{i}].image") for i, value in images]
        tensors = await run_in_threadpool(lambda: [self.model_tensor(im) for im in decoded])
        side = self.served.model.image_size
        futures = self.submit("text", "text", [t for _, t in texts]) if texts else []
        try:
            futures += self.submit("image", ("image", side), tensors) if tensors else []
        except ApiError:
            for f in futures:  # the texts' forwards would be for nobody
                f.cancel()
            raise
        results = await self.wait(futures, started)
        vectors: dict[int, np.ndarray] = {}
        tokens = 0
        for (i, _), (vector, count) in zip(texts, results[: len(texts)]):
            vectors[i] = vector
            tokens += count
        for (i, _), cls in zip(images, results[len(texts):]):
            vectors[i] = cls[body.cls]
        data = []
        for i in range(len(items)):
            v = vectors[i]
            if body.dimensions is not None and body.dimensions < width:
                v = v[: body.dimensions] / max(float(np.linalg.norm(v[: body.dimensions])), 1e-12)
            embedding = b64_array(v.astype(np.float32)) if body.encoding_format == "base64" else v.astype(float).tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return JSONResponse({"object": "list", "data": data, "model": self.served.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def dense(self, task: str, request: Request) -> Response:
        started = time.monotonic()
        body: DenseRequest = await self.read(request, DenseRequest)
        self.check_model(body.model)
        if task not in self.served.heads:
            raise ApiError(404, f"/v1/{task}: no {task} head is loaded; start tips-serve with --head <a {task} head>",
                           None, "no_head")
        image = await self.image(body.image, "image")
        x = await run_in_threadpool(self.model_tensor, image)
        (output,) = await self.wait(self.submit(task, (task, tuple(x.shape)), [x]), started)
        head = self.served.heads[task]
        values = await run_in_threadpool(to_input_size, task, output, (image.height, image.width))
        if body.format == "png":
            legend = ({LEGEND_HEADER: legend_header(values, class_names(head.cfg.out_channels), head.cfg.out_channels)}
                      if task == "segmentation" else None)
            return Response(await run_in_threadpool(png_bytes, task, values, head.cfg.out_channels),
                            media_type="image/png", headers=legend)
        return JSONResponse({"object": task, "model": self.served.name, **array_body(values)})

    async def open_vocab(self, request: Request) -> Response:
        started = time.monotonic()
        body: OpenVocabRequest = await self.read(request, OpenVocabRequest)
        self.check_model(body.model)
        names = [n for n in (body.classes.split(",") if isinstance(body.classes, str) else body.classes)
                 if n.replace("|", "").strip()]
        if not names:
            raise ApiError(422, "classes: give at least one class name", "classes", "invalid_value")
        if len(names) > self.limits.max_classes:
            raise too_large("classes", len(names), self.limits.max_classes, "classes", "--max-classes")
        for i, name in enumerate(names):
            check_text(name, f"classes[{i}]", self.limits.max_text_chars)
        try:
            classes = parse_classes(",".join(names)) if isinstance(body.classes, str) else names
        except ValueError as e:
            raise ApiError(422, f"classes: {e}", "classes", "invalid_value") from None
        image = await self.image(body.image, "image")
        side = self.served.model.image_size  # the protocol resizes the short side to it, then slides windows
        resized = side * side * max(image.width, image.height) // max(1, min(image.width, image.height))
        if resized > MAX_RESIZED_PIXELS:
            raise ApiError(413, f"image: {image.width}x{image.height} resized to a {side}-pixel short side would be "
                           f"{resized} pixels, more than {MAX_RESIZED_PIXELS} (an extreme aspect ratio)", "image",
                           "too_large")
        (seg,) = await self.wait(self.submit("open_vocab", "open_vocab", [(image, classes)]), started)
        labels = seg.labels.numpy().astype(np.int32)
        if body.format == "png":
            return Response(await run_in_threadpool(png_bytes, "segmentation", labels, len(seg.class_names)),
                            media_type="image/png", headers={LEGEND_HEADER: legend_header(labels, seg.class_names)})
        return JSONResponse({"object": "open-vocab", "model": self.served.name, "classes": seg.class_names,
                             "background_id": seg.background_id, **array_body(labels)})

    async def search(self, request: Request) -> JSONResponse:
        started = time.monotonic()
        body: SearchRequest = await self.read(request, SearchRequest)
        self.check_model(body.model)
        index = self.served.index
        if index is None:
            raise ApiError(404, "/v1/search: no index is loaded; start tips-serve with --index DIR", None, "no_index")
        if (body.text is None) == (body.image is None):
            raise ApiError(422, "text, image: give exactly one of them", "text", "invalid_value")
        k = min(10, self.limits.max_k) if body.k is None else body.k
        if not 1 <= k <= self.limits.max_k:
            raise ApiError(422, f"k: {k} is outside 1..{self.limits.max_k} (tips-serve --max-k)", "k", "invalid_value")
        if body.text is not None:
            text = check_text(body.text, "text", self.limits.max_text_chars)
            ((query, _),) = await self.wait(self.submit("text", "text", [text]), started)
        else:
            if index.kind == "region":
                raise ApiError(422, "image: this is a region index; search it with text", "image", "invalid_value")
            image = await self.image(body.image, "image")
            x = await run_in_threadpool(self.model_tensor, image, index.resolution)
            (cls,) = await self.wait(self.submit("image", ("image", index.resolution), [x]), started)
            query = cls["alt" if index.kind == "cls_alt" else "syn"]
        full = query
        if index.width < len(query):
            query = query[: index.width] / max(float(np.linalg.norm(query[: index.width])), 1e-12)
        scores, rows = await run_in_threadpool(index.search, query[None].astype(np.float32), k)
        hits = [{**_plain(row), "score": float(s)} for row, s in zip(rows[0], scores[0])]
        if body.heatmaps and body.text is not None and hits:
            maps = await self.heatmaps(hits, full, started)
            for hit, heat in zip(hits, maps):
                hit["heatmap"] = heat
        return JSONResponse({"object": "search", "kind": index.kind, "model": self.served.name, "hits": hits})

    async def heatmaps(self, hits: list[dict], query: np.ndarray, started: float) -> list[dict | None]:
        """Where the text lands in each hit's image: cosines of its value-readout patches with the query (h, w)."""
        index = self.served.index
        loaded = await run_in_threadpool(lambda: [_open_row_image(hit, self.limits.max_image_pixels) for hit in hits])
        readable = [(i, self.model_tensor(im, index.resolution)) for i, im in enumerate(loaded) if im is not None]
        if not readable:
            return [None] * len(hits)
        patches = await self.wait(self.submit("readout", ("readout", index.resolution), [x for _, x in readable]),
                                  started)
        out: list[dict | None] = [None] * len(hits)
        q = np.asarray(query, np.float32)
        for (i, _), p in zip(readable, patches):
            p = p.numpy()
            heat = p @ q / np.maximum(np.linalg.norm(p, axis=-1), 1e-12)  # (h, w) cosines (q is unit length)
            out[i] = {"shape": list(heat.shape), "data": [round(float(v), 5) for v in heat.ravel()]}
        return out

    async def indexed_image(self, row: int) -> Response:
        index = self.served.index
        if index is None:
            raise ApiError(404, "no index is loaded; start tips-serve with --index DIR", None, "no_index")
        if not 0 <= row < index.count:
            raise ApiError(404, f"row: {row} is outside 0..{index.count - 1}", "row", "not_found")
        image = await run_in_threadpool(_open_row_image, index.row(row), self.limits.max_image_pixels)
        if image is None:
            raise ApiError(404, f"row {row}: its image is not readable on this machine", "row", "not_found")
        return Response(await run_in_threadpool(thumbnail_jpeg, image), media_type="image/jpeg")

    def models(self) -> dict:
        """OpenAI's model list: the one model this server serves."""
        return {"object": "list", "data": [{"id": self.served.name, "object": "model", "owned_by": "tips"}]}

    def health(self) -> dict:
        s = self.served
        return {"status": "ok", "model": s.name, "width": s.model.width, "image_size": s.model.image_size,
                "heads": sorted(s.heads), "index": None if s.index is None else
                {"kind": s.index.kind, "count": s.index.count, "width": s.index.width},
                "queue": self.batcher.pending, "random_weights": s.random, "precision": s.precision}


def _param(loc: Sequence[Any]) -> str:
    """A pydantic location as the field's name: ``("classes", 0)`` → ``classes[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(row: dict) -> dict:
    """A row's values as JSON ones (numpy scalars → numbers; non-finite floats → None)."""
    out = {}
    for k, v in row.items():
        v = v.item() if isinstance(v, np.generic) else v
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def _open_row_image(row: dict, max_pixels: int):
    path = Path(str(row.get("source") or row.get("id")))
    try:
        return decode_upload(path.read_bytes(), max_pixels)
    except (OSError, UploadError):
        return None


def _dense_route(server: Server, task: str):
    async def route(request: Request) -> Response:
        return await server.dense(task, request)
    return route


def create_app(served: ServedModel, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app; its worker thread starts and stops with the app's lifespan (``app.state.server`` holds the
    :class:`Server`)."""
    server = Server(served, options or ServeOptions())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        try:
            yield
        finally:
            server.batcher.stop()

    app = FastAPI(title="tips-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or "request"
        return await _api_error(request, ApiError(422, f"{param}: {first['msg']}", param, "invalid_value"))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        # a fault of the server, not of the request: said in one line, and the server keeps serving
        return JSONResponse({"error": {"message": f"internal error: {type(e).__name__}: {str(e)[:200]}",
                                       "type": "server_error", "param": None, "code": None}}, status_code=500)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        started = time.monotonic()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            path = request.url.path
            route = next((r for r in ROUTES if path == r or (r not in ("/",) and path.startswith(r + "/"))), "other")
            server.metrics.observe_request(route, status, time.monotonic() - started)

    app.get("/v1/models")(server.models)
    app.post("/v1/embeddings")(server.embeddings)
    for task in DENSE_TASKS:
        app.post(f"/v1/{task}", name=task)(_dense_route(server, task))
    app.post("/v1/open-vocab")(server.open_vocab)
    app.post("/v1/search")(server.search)
    app.get("/v1/images/{row}")(server.indexed_image)
    app.get("/health")(server.health)

    @app.get("/metrics")
    def _metrics() -> Response:
        return Response(server.metrics.text(), media_type=Metrics.content_type)

    @app.get("/")
    def _page() -> FileResponse:
        return FileResponse(PAGE / "index.html", media_type="text/html")

    @app.get("/page/{name}")
    def _asset(name: str) -> FileResponse:
        if name not in {"app.js", "style.css"}:
            raise ApiError(404, f"/page/{name}: no such file", None, "not_found")
        return FileResponse(PAGE / name)

    return app
