"""Version builds killed at each named step (SIGKILL, no handler runs) and rerun: the lineage
neither loses nor doubles an event.

A child process runs build_version with a step callback that, at the named step, writes a
marker file and sleeps; the test SIGKILLs it there. Between the kill and the rerun new events
may arrive (the rerun then cuts a wider range and the killed build's segment is an orphan) or
not (the rerun cuts the same range and finds its segment written). Every expected figure is
counted here from the stream itself (XRANGE, the positive types), never from the service's
own results: each version's events over its range, its pairs, and the whole lineage's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from service.core import keys
from service.core.artifacts import ArtifactStore
from service.core.config import Settings
from service.core.event_segments import segment_key
from service.core.events import Event, EventLog
from service.core.records import ConflictError
from service.core.registry import Registry
from service.core.versions import STEPS, build_version, lineage
from tests.reliability.conftest import observe, seed_dataset, wait_until
from tests.support.processes import ROOT, child_env, kill_process, log_tail
from training.dataset import Dataset

CHILD_LOCK_TTL_S = 8.0  # the killed builder's lock expires after this; a rerun before: 409

# The builder: stops for good at the step named by argv[1], after writing the marker argv[2].
_CHILD = """
import sys, time
from pathlib import Path
from service.core.config import get_settings
from service.core.registry import Registry
from service.core.versions import build_version

stop_at, marker, dataset_id, ttl = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
settings = get_settings()
registry = Registry.from_url(settings.redis_url or "")

def on_step(name):
    if name == stop_at:
        marker.write_text(name)
        time.sleep(600)

build_version(registry, settings, registry.redis, dataset_id, lock_ttl_s=float(ttl),
              on_step=on_step)
print("built without stopping", flush=True)
"""


def pairs_of(ds: Dataset) -> set[tuple[str, str]]:
    rows = np.concatenate([ds.train, ds.valid, ds.test])
    return {(str(ds.user_ids[u]), str(ds.item_ids[i])) for u, i in rows}


def positives(
    client: redis.Redis, settings: Settings, after: str, until: str
) -> list[tuple[str, str]]:
    """Brute force: the positive events' (user, item) with stream ids in (after, until]."""
    wanted = set(settings.events_positive_types)
    entries = client.xrange(keys.events_stream(), f"({after}" if after != "0-0" else "-", until)
    return [(f["user_id"], f["item_id"]) for _, f in entries if f["type"] in wanted]


def test_a_killed_build_neither_loses_nor_doubles_events(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True)
    registry = Registry(client)
    store = ArtifactStore.from_settings(settings)
    root_ds = seed_dataset(settings, registry, n_users=40, n_items=30, seed=3)
    root_id = "ds-rel3"
    log = EventLog(client, dedup_ttl_s=3600, maxlen=0)
    rng = np.random.default_rng(7)
    sent = 0

    def push(n: int) -> None:
        nonlocal sent
        batch = []
        for _ in range(n):
            known = rng.random() < 0.8
            user = str(rng.integers(40)) if known else f"new-u{rng.integers(5)}"
            item = str(rng.integers(30)) if rng.random() < 0.9 else f"new-i{rng.integers(3)}"
            kind = str(rng.choice(["view", "view", "click", "purchase", "cart"]))
            batch.append(Event(f"e{sent}", user, item, kind, time.time()))
            sent += 1
        assert log.append(batch).stored == n

    lock = keys.dataset_build_lock(root_id)
    killed: list[dict[str, object]] = []
    for k, step in enumerate(STEPS):
        push(60)
        parent = lineage(registry, root_id)[0]
        killed_cut = str(client.xrevrange(keys.events_stream(), "+", "-", count=1)[0][0])
        marker, child_log = tmp_path / f"at-{step}", tmp_path / f"builder-{step}.log"
        with child_log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, step, str(marker), root_id, str(CHILD_LOCK_TTL_S)],
                cwd=ROOT,
                env=child_env(settings, {"PYTHONPATH": str(ROOT)}),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(
                lambda: marker.exists() or proc.poll() is not None,  # noqa: B023
                60,
                f"the builder to reach {step}",
            )
            assert marker.exists(), log_tail(child_log)
        finally:
            kill_process(proc)
        assert proc.returncode == -9
        # Killed: nothing committed, and the lineage is locked until the lock expires.
        assert lineage(registry, root_id)[0].id == parent.id
        with pytest.raises(ConflictError, match="being built"):
            build_version(registry, settings, client, root_id)
        orphan = segment_key(root_id, parent.events_cursor, killed_cut)
        assert store.exists(orphan) == (STEPS.index(step) > STEPS.index("segment")), step
        wait_until(lambda: not client.exists(lock), CHILD_LOCK_TTL_S + 5, "the lock to expire")

        widen = k % 2 == 0  # events between the kill and the rerun, every other time
        if widen:
            push(25)
        result = build_version(registry, settings, client, root_id)
        assert result.record is not None and result.record.lineage is not None
        version = result.record
        cut = str(client.xrevrange(keys.events_stream(), "+", "-", count=1)[0][0])
        assert version.version == k + 1 and version.parent_id == parent.id
        assert (version.lineage["events_from"], version.lineage["events_to"]) == (
            parent.events_cursor,
            cut,
        )
        assert (version.lineage["segment"] == orphan) == (not widen)
        mine = positives(client, settings, parent.events_cursor, cut)
        assert version.lineage["events"] == result.new_events == len(mine)
        everything = positives(client, settings, "0-0", cut)
        ds = Dataset.load(store.resolve(version.path))
        assert pairs_of(ds) == pairs_of(root_ds) | set(everything)
        assert version.statistics["interactions"] == len(pairs_of(root_ds) | set(everything))
        killed.append({"step": step, "rerun_widened": widen, "events": len(mine)})

    # The whole lineage: contiguous ranges from the root's cursor, every positive event once.
    records = lineage(registry, root_id)[::-1]
    assert [r.version for r in records] == list(range(len(STEPS) + 1))
    for older, newer in zip(records, records[1:], strict=False):
        assert newer.lineage is not None
        assert newer.lineage["events_from"] == older.events_cursor
    total = sum(int((r.lineage or {}).get("events", 0)) for r in records)
    assert total == len(positives(client, settings, "0-0", "+"))
    observe(
        "versions_crash",
        fault="a dataset version's build SIGKILLed at each step (read, segment, dataset, record)",
        kills=len(killed),
        steps=list(STEPS),
        events_sent=sent,
        positive_events=total,
        lost=0,
        doubled=0,
    )
    client.close()
