"""What a request may hold, and the one error every route answers with.

Every refusal is an :class:`ApiError`: an HTTP status (400 a malformed body or a broken image, 413 something over
a limit, 422 a field of the wrong type or value, 503 overload or a timeout) and a JSON body in the OpenAI shape,
``{"error": {"message", "type", "param", "code"}}``, whose ``param`` names the field and whose message names the
limit and the flag that sets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Limits:
    """max_body_bytes: a request body; max_image_pixels: one decoded image (width x height, read from its header
    before decoding); max_inputs: items in one request's ``input``; max_text_chars: one text; max_classes: classes of
    one open-vocabulary request; max_k: hits of one search."""

    max_body_bytes: int = 32 * 2**20
    max_image_pixels: int = 40_000_000
    max_inputs: int = 2048
    max_text_chars: int = 20_000
    max_classes: int = 256
    max_k: int = 100


@dataclass(frozen=True)
class ServeOptions:
    """max_batch: items per forward (1 turns batching off); max_wait_ms: how long a batch's first item waits for
    others; max_queue: items waiting before requests are refused with 503; timeout_s: a request's time limit (503
    past it); limits: what one request may hold."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    timeout_s: float = 30.0
    limits: Limits = field(default_factory=Limits)


class ApiError(Exception):
    """A refusal: ``status``, a one-line ``message``, the field it concerns (``param``, e.g. ``input[3].image``),
    a machine-readable ``code`` and extra response headers (``Retry-After`` on 503)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "server_overloaded" if self.status == 503 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def too_large(param: str, size: int, limit: int, unit: str, flag: str) -> ApiError:
    """413 naming the field, its size, the limit and the flag that raises it: ``input: 5 items, over the limit of 4
    (tips-serve --max-inputs)``."""
    return ApiError(413, f"{param}: {size} {unit}, over the limit of {limit} (tips-serve {flag})", param, "too_large")
