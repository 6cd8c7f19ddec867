"""The garbage-collector policy of a serving process: freeze what lives long.

CPython frees most objects by reference counting; its cyclic collector also walks every
tracked container now and then, and a full (generation-2) pass walks all of them. In an
API process that is about 100,000 objects after startup (FastAPI, pydantic, starlette,
the faiss wrappers, a loaded bundle) and one full pass took 67 ms on the 2-core bench
machine, with the event loop and the search thread stopped: under load it came every few
thousand requests and set the 99th percentile (bench/serve.py, 16 connections: p50 7.4 ms,
p99 59 ms; with the freeze below, p99 13 ms at the same throughput).

`freeze_long_lived()` collects once and then moves every object alive into the permanent
generation (gc.freeze), which later passes skip: the passes that remain walk only what
requests allocate. The API calls it when it has started and after each bundle swap, so a
new bundle's objects join the frozen set.

What the first requests make lives as long, but comes after that freeze: modules imported
on first use (anyio's thread backend, the server's own when the bundle loads before it
starts, as in bench/serve.py), caches, a model's lazily built tables. About 9,000 such
objects made every full pass cost 3-6 ms of CPU under load, once a second or so at 2,000
requests/s. So each freeze also arms `note_answer`, which the routes call once per answer:
after WARM_ANSWERS answers it freezes once more, on the request's thread (a few ms, once),
and the full passes walk only what requests leave behind (a few hundred objects: 0.04 ms
idle, ~1 ms under load). A request in flight at that moment has its objects frozen too;
those are still freed by reference counting, and only a cycle among them would outlive it
(once: at most what the requests in flight at that moment hold).

Freezing is safe for bundles only because a bundle holds no reference cycle (its
coalescer references it weakly: service/serving/coalescer.py): a frozen object is still
freed by reference counting when its last reference goes, but a frozen *cycle* would never
be freed. tests/unit/test_serving_gc.py checks that a used, then dropped, bundle is freed
with the collector switched off.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)

WARM_ANSWERS = 2000  # answers after a load before the second freeze (module doc)


class _Warm:
    """Answers left before the warm-up freeze; 0 when none is due (the hot path's test)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = 0


_WARM = _Warm()


def arm_warm_freeze(answers: int = WARM_ANSWERS) -> None:
    """Freeze once more after `answers` more answers (0: not at all)."""
    _WARM.left = answers


def note_answer() -> None:
    """Called once per answer: one attribute read, unless the warm-up freeze is due.

    Answers of the threadpool routes may race on the count; the worst outcome is a second
    freeze or a few answers late, both harmless.
    """
    left = _WARM.left
    if left:
        _WARM.left = left - 1
        if left == 1:
            freeze_long_lived("warmed up")


def freeze_long_lived(reason: str) -> float:
    """Collect once, then freeze every object alive; returns the seconds it took.

    The collection before the freeze keeps today's garbage out of the permanent generation.
    Runs on the caller's thread and holds the GIL for its duration (tens of ms after a
    bundle load, once per swap).
    """
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - start
    logger.info(
        "gc: froze %d long-lived objects (%s) in %.0f ms", gc.get_freeze_count(), reason, 1e3 * took
    )
    return took
