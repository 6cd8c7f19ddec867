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
