"""Datasets that grow: a version is its parent plus the positive events since, with lineage.

A version is a dataset record of its own (a `ds-...` id, `source` "version"), so every job
takes it as `dataset_id` unchanged. Its record says where it came from: `root_id`,
`parent_id`, `version` (1, 2, … along the lineage), `events_cursor` (the events stream id up
to which events are in it, inclusive) and `lineage` {parent_id, events_from (exclusive),
events_to (inclusive), events (positive events added), segment (artifact-store key), …}. A
root (an upload, the synthetic set) has version 0 and the stream's last id when it was
registered as its cursor ("0-0" when the stream was empty). The new version's parent is the
latest version of the lineage, whichever of its ids the caller named.

Rows, in time order. A prepared root has no timestamps, but its held-out pairs are each
user's latest, so its pairs in the order train, valid, test come first; then each version's
segment of events in stream order. A new version is the parent's ordered rows plus the new
positive events, de-duplicated keeping a pair's first occurrence. Events speak external ids:
a user or item the parent does not know becomes a new dense id appended after the parent's
(in order of first appearance), so every known id keeps its dense index and a model trained
on the parent still lines up with the version.

Split, chosen per build (`split`, recorded in the record's options, its lineage and the
dataset's info):
- "temporal" (the default): training.split.split_temporal over that order, every row at the
  same timestamp, so the tie rule "a later row counts as later" holds each user's latest rows
  out, with the root's holdout and seed; every row is split anew, whatever the parent's rule.
  A random split would re-draw old users' held-out pairs at every version, and would let a
  model train on a user's newest events while it is tested on older ones. Use it when a
  version should be judged on what came last (the newest behaviour is the test).
- "append": every row of the parent keeps the parent's split (read from the parent's dataset
  artifact, so a temporal parent's held-out pairs stay held out), and every new pair goes to
  train. The held-out sets stay fixed along an append lineage, so successive models are
  judged on the same test pairs, and every event is trained on at once. Use it when the
  events are feedback a retrain must learn from: in a feedback loop a user's newest rows ARE
  their new clicks, so temporal holds nearly all of them out (bench/loop.py, 4 retrains:
  1,653 of 1,879 clicked pairs in valid/test; docs/loop.md).
The synthetic root's `truth` (true preferences) is carried forward while the user and item
sets are unchanged; a version with new ids has none (the generator knows nothing of them).

Crash-safe compaction. `cut` is the stream's last id when the build starts. The positive
events of (parent.events_cursor, cut] are written as one immutable object of the artifact
store (`segment_key`: user ids, item ids, ts, stream ids), then the version's dataset
artifact, then its record: the registry write is the commit point. Killed anywhere before it
and rerun, whatever was written is unreferenced (an orphan segment or dataset artifact) and
the rerun cuts its own range from the same parent cursor: nothing lost, nothing doubled. A
rerun with the same range finds the same segment key written and reuses it.

One build per lineage at a time: a Redis lock (`keys.dataset_build_lock`, SET NX PX with a
token) turns a second concurrent build into ConflictError (409). The commit also watches the
lineage's version index, so a build that outlived its lock cannot add a second child to the
same parent.

Trimming. The stream is capped (MAXLEN ~, Settings.events_stream_maxlen), so it may drop
events no version holds yet. When the stream's first entry is after the parent's cursor the
entry at the cursor (and maybe more) was trimmed: the build refuses (EventsTrimmedError, 409)
rather than silently lose events. On Redis 7 the stream's max-deleted-entry-id tells the same
precisely, and is checked too; on Redis 6 a root registered on an empty stream (cursor "0-0")
has no entry to check against. Build versions more often than the stream wraps, or raise
UNKD_EVENTS_STREAM_MAXLEN.

Reading never holds the stream in memory: XRANGE in chunks, projected in Redis
(service/core/event_segments.py, which also writes and reads segments); the rows of a version
are service/core/version_data.py. Everything here needs numpy only (no torch), so the API
builds in its threadpool.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import redis

from service.core import keys
from service.core.artifacts import ArtifactStore, dataset_key
from service.core.config import Settings, get_settings
from service.core.event_segments import (
    ZERO,
    EventsTrimmedError,
    Segment,
    StreamReader,
    check_not_trimmed,
    read_segment,
    segment_key,
    stream_id_key,
    stream_last_id,
    write_segment,
)
from service.core.records import ConflictError, DatasetRecord

if TYPE_CHECKING:
    from service.core.registry import Registry

logger = logging.getLogger(__name__)

LOCK_TTL_S = 900.0  # a build's lock outlives a killed builder by at most this
# The named steps of a build, in order; `on_step(name)` is called just before each.
STEPS = ("read", "segment", "dataset", "record")
# How a version splits its rows (module doc): anew by time, or the parent's split kept.
VersionSplit = Literal["temporal", "append"]
SPLITS: tuple[str, ...] = get_args(VersionSplit)

__all__ = [
    "LOCK_TTL_S",
    "SPLITS",
    "STEPS",
    "ZERO",
    "EventsTrimmedError",
    "Segment",
    "VersionResult",
    "VersionSplit",
    "build_version",
    "latest_version",
    "lineage",
    "pending_events",
    "stream_last_id",
]

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class VersionResult:
    """What one build did.

    Attributes:
        record: the new version's record; None when the build was skipped.
        new_events: positive events after the parent's cursor (up to the cut).
        reason: why it was skipped, human readable ("" when built).
    """

    record: DatasetRecord | None
    new_events: int
    reason: str = ""


# -- the lineage -----------------------------------------------------------------------------


def lineage(registry: Registry, dataset_id: str) -> list[DatasetRecord]:
    """Every record of `dataset_id`'s lineage, newest first (the root last).

    Raises:
        NotFoundError: `dataset_id` names no dataset.
    """
    root = registry.get_dataset(registry.get_dataset(dataset_id).lineage_root)
    ids = [str(i) for i in registry.redis.zrevrange(keys.dataset_versions(root.id), 0, -1)]
    return [*(registry.get_dataset(i) for i in ids), root]


def latest_version(registry: Registry, dataset_id: str) -> DatasetRecord:
    """The newest record of `dataset_id`'s lineage (the root when it has no version)."""
    record = registry.get_dataset(dataset_id)
    root_id = record.lineage_root
    newest = registry.redis.zrevrange(keys.dataset_versions(root_id), 0, 0)
    return registry.get_dataset(str(newest[0])) if newest else registry.get_dataset(root_id)


def pending_events(
    registry: Registry,
    client: redis.Redis,
    dataset_id: str,
    *,
    settings: Settings | None = None,
) -> int:
    """Positive events in the stream after the cursor of the lineage's latest version.

    Args:
        settings: which event types are positive (`events_positive_types`); default
            get_settings().
    """
    types = (settings or get_settings()).events_positive_types
    return StreamReader(client, types).count(latest_version(registry, dataset_id).events_cursor)


# -- building ----------------------------------------------------------------------------------


def build_version(
    registry: Registry,
    settings: Settings,
    client: redis.Redis,
    dataset_id: str,
    *,
    min_new_events: int = 1,
    split: VersionSplit = "temporal",
    lock_ttl_s: float = LOCK_TTL_S,
    on_step: Callable[[str], None] | None = None,
) -> VersionResult:
    """Build the next version of `dataset_id`'s lineage from the positive events since its
    latest version (see the module doc), unless fewer than `min_new_events` arrived.

    Args:
        min_new_events: fewer new positive events than this: skipped (record None).
        split: "temporal" (every row split anew, each user's newest held out) or "append"
            (the parent's split kept, every new pair in train); see the module doc.
        lock_ttl_s: how long the lineage's lock outlives a builder that died holding it.
        on_step: called with each name of STEPS just before that step (tests kill there).

    Raises:
        ValueError: `split` is not one of SPLITS.
        NotFoundError: no such dataset.
        ConflictError: another build of the lineage is running, or another build committed a
            version of the same parent first.
        EventsTrimmedError: events after the parent's cursor were trimmed from the stream.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    step = on_step or (lambda _name: None)
    root_id = registry.get_dataset(dataset_id).lineage_root
    lock = keys.dataset_build_lock(root_id)
    token = secrets.token_hex(8)
    if not client.set(lock, token, nx=True, px=max(1, int(lock_ttl_s * 1000))):
        raise ConflictError(
            "dataset_id",
            dataset_id,
            f"a version of dataset {root_id}'s lineage is being built now; retry when it ends",
        )
    try:
        return _build(registry, settings, client, dataset_id, min_new_events, split, step)
    finally:
        client.register_script(_RELEASE_LUA)(keys=[lock], args=[token])


def _build(
    registry: Registry,
    settings: Settings,
    client: redis.Redis,
    dataset_id: str,
    min_new_events: int,
    split: VersionSplit,
    step: Callable[[str], None],
) -> VersionResult:
    t0 = time.perf_counter()
    parent = latest_version(registry, dataset_id)
    root_id = parent.lineage_root
    cut = stream_last_id(client)  # read first: events after it wait for the next version
    check_not_trimmed(client, dataset_id, parent.events_cursor)
    reader = StreamReader(client, settings.events_positive_types)
    if stream_id_key(cut) <= stream_id_key(parent.events_cursor):
        new_events = 0
    else:
        new_events = reader.count(parent.events_cursor, cut)
    if new_events < min_new_events:
        reason = (
            f"{new_events} new positive events after {parent.id}'s cursor "
            f"{parent.events_cursor}, fewer than min_new_events={min_new_events}"
        )
        return VersionResult(None, new_events, reason)

    step("read")
    segment = reader.segment(parent.events_cursor, cut)
    store = ArtifactStore.from_settings(settings)
    key = segment_key(root_id, parent.events_cursor, cut)
    step("segment")
    write_segment(store, key, segment, settings.data_dir)

    step("dataset")
    # numpy and training.dataset: off the import path
    from service.core.version_data import append, grow

    root = registry.get_dataset(root_id)
    name = _version_name(root, parent)
    if split == "append":  # the parent's own split arrays, whichever rule made them
        dataset, added = append(store.resolve(parent.path), segment, name=name)
    else:
        history = [read_segment(store, _segment_of(r)) for r in _versions_up_to(registry, parent)]
        dataset, added = grow(store.resolve(root.path), history, segment, name=name)
    if dataset.n_users < int(parent.statistics.get("users", 0)) or dataset.n_items < int(
        parent.statistics.get("items", 0)
    ):
        raise RuntimeError(f"{parent.id}: its lineage rebuilt has fewer ids than its record")
    version_id = f"ds-{secrets.token_hex(6)}"
    local = dataset.save(settings.datasets_dir.resolve() / version_id)
    location = store.commit(dataset_key(version_id), local)

    record = DatasetRecord(
        id=version_id,
        name=dataset.name,
        source="version",
        fingerprint=dataset.fingerprint,
        path=location,
        options={"split": split, **{k: dataset.info.get(k) for k in ("holdout", "seed")}},
        statistics=dataset.statistics(),
        root_id=root_id,
        parent_id=parent.id,
        version=parent.version + 1,
        events_cursor=cut,
        lineage={
            "parent_id": parent.id,
            "events_from": parent.events_cursor,
            "events_to": cut,
            "events": len(segment),
            "segment": key,
            "split": split,
            **added,
        },
    )
    step("record")
    _commit(registry, record, parent)
    logger.info(
        "dataset %s: version %d (%s) of %s from %s + %d positive events (%s, %s] in %.2fs",
        record.id,
        record.version,
        split,
        root_id,
        parent.id,
        len(segment),
        parent.events_cursor,
        cut,
        time.perf_counter() - t0,
    )
    return VersionResult(record, new_events)


def _version_name(root: DatasetRecord, parent: DatasetRecord) -> str:
    return f"{root.name} v{parent.version + 1}"


def _versions_up_to(registry: Registry, parent: DatasetRecord) -> list[DatasetRecord]:
    """The versions of parent's lineage from 1 to parent's own, oldest first."""
    if parent.version == 0:
        return []
    ids = registry.redis.zrangebyscore(
        keys.dataset_versions(parent.lineage_root), 1, parent.version
    )
    return [registry.get_dataset(str(i)) for i in ids]


def _segment_of(record: DatasetRecord) -> str:
    segment = (record.lineage or {}).get("segment")
    if not isinstance(segment, str):
        raise RuntimeError(f"dataset {record.id}: a version whose lineage names no segment")
    return segment


def _commit(registry: Registry, record: DatasetRecord, parent: DatasetRecord) -> None:
    """Register `record` as the lineage's newest version, if `parent` still is its newest."""
    index = keys.dataset_versions(parent.lineage_root)

    def txn(pipe: redis.client.Pipeline) -> None:
        newest = pipe.zrevrange(index, 0, 0)
        newest_id = str(newest[0]) if newest else parent.lineage_root
        if newest_id != parent.id:
            raise ConflictError(
                "dataset_id",
                parent.id,
                f"version {newest_id} was committed meanwhile; build again from it",
            )
        pipe.multi()
        pipe.set(keys.dataset(record.id), record.model_dump_json())
        pipe.zadd(keys.DATASETS, {record.id: record.created_at.timestamp()})
        pipe.zadd(index, {record.id: record.version})

    registry.redis.transaction(txn, index)
