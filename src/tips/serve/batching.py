"""Dynamic batching on one worker thread.

Requests put *items* (one text, one image) in a queue per group (a kind and a resolution: only items that can share
a forward share a group). The worker takes the group whose first item waited longest and runs it when it holds
``max_batch`` items or when ``max_wait`` has passed since that first item arrived, whichever is first; a request of
more than ``max_batch`` items is thereby split over several forwards. Every forward runs on the one worker thread,
so the model is never entered twice at once. Each item has a :class:`concurrent.futures.Future`; a cancelled one
(its request timed out) is dropped before its forward.

    batcher = Batcher({"text": encode_texts}, max_batch=32, max_wait_s=0.005, max_queue=1024)
    batcher.start()
    futures = batcher.submit("text", ("text",), ["a cat", "a dog"])   # QueueFull when the queue is full
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

Handler = Callable[[list[Any]], Sequence[Any]]


class QueueFull(Exception):
    """More items waiting than ``max_queue``: the caller answers 503 with Retry-After."""


@dataclass
class _Item:
    payload: Any
    future: Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """handlers: kind → function(payloads) → one result per payload, run on the worker thread.
    max_batch: items per forward (1 = no batching); per_kind_max: a smaller cap for some kinds (open-vocabulary
    segmentation runs one image at a time). observe_batch(kind, size) and queue_depth(n) report to metrics."""

    def __init__(self, handlers: dict[str, Handler], max_batch: int = 32, max_wait_s: float = 0.005,
                 max_queue: int = 1024, per_kind_max: dict[str, int] | None = None,
                 observe_batch: Callable[[str, int], None] | None = None,
                 queue_depth: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch {max_batch} and max_queue {max_queue} must be >= 1, max_wait {max_wait_s} >= 0")
        self.handlers, self.max_batch, self.max_wait_s, self.max_queue = handlers, max_batch, max_wait_s, max_queue
        self.per_kind_max = per_kind_max or {}
        self._observe_batch = observe_batch or (lambda kind, n: None)
        self._queue_depth = queue_depth or (lambda n: None)
        self._groups: OrderedDict[tuple[str, Hashable], deque[_Item]] = OrderedDict()
        self._pending = 0
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="tips-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        for items in self._groups.values():
            for item in items:
                item.future.cancel()
        self._groups.clear()

    def submit(self, kind: str, group: Hashable, payloads: Sequence[Any]) -> list[Future]:
        """Queue ``payloads`` for the ``kind`` handler in ``group``; all of them or none (:class:`QueueFull`)."""
        if kind not in self.handlers:
            raise KeyError(f"no handler for {kind!r}")
        items = [_Item(p, Future()) for p in payloads]
        with self._cond:
            if not self._running:
                raise RuntimeError("the batcher is not running")
            if self._pending + len(items) > self.max_queue:
                raise QueueFull(f"{self._pending} items are waiting and the queue holds {self.max_queue}")
            self._groups.setdefault((kind, group), deque()).extend(items)
            self._pending += len(items)
            self._queue_depth(self._pending)
            self._cond.notify_all()
        return [item.future for item in items]

    def call(self, kind: str, payload: Any) -> Future:
        """One item: the handler runs it on the worker thread (in a batch of others of its group, if any)."""
        return self.submit(kind, (kind,), [payload])[0]

    # ------------------------------------------------------------------------------------------ worker
    def _cap(self, kind: str) -> int:
        return min(self.max_batch, self.per_kind_max.get(kind, self.max_batch))

    def _next_batch(self) -> tuple[str, list[_Item]] | None:
        """Wait until a group is due; take its batch. None once stopped."""
        with self._cond:
            while self._running:
                now = time.monotonic()
                due, wake = None, None
                for key, items in self._groups.items():  # oldest first item first: groups are never starved
                    deadline = items[0].arrived + self.max_wait_s
                    if len(items) >= self._cap(key[0]) or deadline <= now:
                        due = key
                        break
                    wake = deadline if wake is None else min(wake, deadline)
                if due is None:
                    self._cond.wait(None if wake is None else wake - now)
                    continue
                items = self._groups[due]
                batch = [items.popleft() for _ in range(min(len(items), self._cap(due[0])))]
                if items:
                    self._groups.move_to_end(due)  # the rest waits behind groups that arrived earlier
                else:
                    del self._groups[due]
                self._pending -= len(batch)
                self._queue_depth(self._pending)
                return due[0], batch
            return None

    def _loop(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            kind, batch = taken
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self._observe_batch(kind, len(live))
            try:
                results = self.handlers[kind]([item.payload for item in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{kind}: {len(results)} results for {len(live)} items")
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request; the worker carries on
                for item in live:
                    item.future.set_exception(e)
                continue
            for item, result in zip(live, results):
                item.future.set_result(result)
