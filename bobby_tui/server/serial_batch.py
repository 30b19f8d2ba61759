"""The batch interface over ``Engine.generate``: one request at a time, its drafts decoded together.

Stands in for ``inference.batching.BatchGenerator`` (same methods) until the engine batches rows of different
requests: requests run in order, so a request's rows wait for the one before it.
"""

from __future__ import annotations

from collections import deque
from itertools import count
from typing import Any, Iterator

from inference.api import DraftDone, GenerationRequest, GenerationStats, TokenDelta


class SerialBatchGenerator:
    def __init__(self, engine: Any, max_rows: int = 32):
        self._engine, self._max_rows = engine, max_rows
        self._ids = count(1)
        self._queue: deque[tuple[int, GenerationRequest]] = deque()
        self._current: tuple[int, GenerationRequest, Iterator] | None = None
        self._cancelled: set[int] = set()
        self._carried: TokenDelta | DraftDone | None = None  # the first event of the next step
        self._step_ended = False

    def submit(self, request: GenerationRequest) -> int:
        if not request.drafts:
            raise ValueError("a request needs at least one draft")
        if len(request.drafts) > self._max_rows:
            raise ValueError(f"{len(request.drafts)} drafts exceed the batch's {self._max_rows} rows")
        request_id = next(self._ids)
        self._queue.append((request_id, request))
        return request_id

    def cancel(self, request_id: int) -> None:
        self._cancelled.add(request_id)

    @property
    def has_work(self) -> bool:
        return self._current is not None or bool(self._queue)

    @property
    def active_rows(self) -> int:
        rows = sum(len(request.drafts) for _, request in self._queue)
        return rows + (len(self._current[1].drafts) if self._current is not None else 0)

    def step(self) -> list[tuple[int, TokenDelta | DraftDone]]:
        events = self._drop_cancelled_queued()
        if self._current is None:
            if not self._queue:
                return events
            request_id, request = self._queue.popleft()
            self._current = (request_id, request, self._engine.generate(request, self._step_boundary(request_id)))
        request_id, _, generation = self._current
        if self._carried is not None:
            events.append((request_id, self._carried))
            self._carried = None
        self._step_ended = False
        for event in generation:
            if self._step_ended and request_id not in self._cancelled:  # should_cancel was asked: the next step's
                self._carried = event
                return events
            events.append((request_id, event))
        self._current = None
        self._cancelled.discard(request_id)
        return events

    def _step_boundary(self, request_id: int):
        """Engine.generate calls should_cancel once per decode step: that marks where a step ends."""
        def should_cancel() -> bool:
            self._step_ended = True
            return request_id in self._cancelled

        return should_cancel

    def _drop_cancelled_queued(self) -> list[tuple[int, DraftDone]]:
        events = []
        for entry in [e for e in self._queue if e[0] in self._cancelled]:
            self._queue.remove(entry)
            self._cancelled.discard(entry[0])
            stats = GenerationStats(0, 0, 0.0, 0.0, 0)
            events += [(entry[0], DraftDone(i, "", "cancelled", params, stats))
                       for i, params in enumerate(entry[1].drafts)]
        return events
