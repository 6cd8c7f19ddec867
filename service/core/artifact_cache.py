"""This host's cache of artifacts fetched from a store URL, and keeping it under a size.

`ArtifactStore.fetch` (service/core/artifacts.py) renames a verified download into
``<data_dir>/cache/artifacts/<key>``; its manifest's mtime is the copy's last use. `prune`
keeps the cache under ``settings.artifact_cache_max_mb``, least recently used first (workers
after each job, API processes after each bundle swap), never removing what the caller serves
nor a copy used in the last CACHE_GRACE_S. The data-dir mode has no cache: the store's
`cached` and `prune_cache` answer [] there without coming here.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from service.core.artifact_manifest import (
    KEY_PATTERN,
    MANIFEST_FILE,
    ArtifactError,
    Manifest,
)

logger = logging.getLogger(__name__)

CACHE_SUBDIR = Path("cache") / "artifacts"
CACHE_GRACE_S = 600.0  # an artifact used this recently is never pruned (a reader may hold it)


@dataclass(frozen=True)
class CachedArtifact:
    """One artifact in a host's cache: its key, directory, bytes and last use (epoch s)."""

    key: str
    path: Path
    size: int
    last_used: float


def touch(path: Path) -> None:
    """Mark a cached copy used now (its manifest's mtime)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves; it just ages as written


def whole(key: str, dest: Path) -> bool:
    """A cached copy is complete (renamed in after verification) and whole (sizes match
    its manifest); one that is not is removed, to be fetched again."""
    marker = dest / MANIFEST_FILE
    if not marker.is_file():
        return False
    try:
        manifest = Manifest.from_json(key, marker.read_bytes())
        ok = all(
            (dest / n).is_file() and (dest / n).stat().st_size == e.size
            for n, e in manifest.files.items()
        )
    except (ArtifactError, OSError):
        ok = False
    if not ok:
        logger.warning("artifact %s: cached copy %s is damaged; fetching it again", key, dest)
        shutil.rmtree(dest, ignore_errors=True)
    return ok


def cached(cache_dir: Path) -> list[CachedArtifact]:
    """The complete artifacts in `cache_dir`, least recently used first."""
    if not cache_dir.is_dir():
        return []
    out = []
    for marker in cache_dir.rglob(MANIFEST_FILE):
        where = marker.parent
        key = where.relative_to(cache_dir).as_posix()
        if key.startswith(".tmp/") or not KEY_PATTERN.match(key):
            continue
        try:
            manifest = Manifest.from_json(key, marker.read_bytes())
            used = marker.stat().st_mtime
        except (ArtifactError, OSError):
            continue  # a damaged copy: `whole` removes it on its next use
        out.append(CachedArtifact(key, where, sum(e.size for e in manifest.files.values()), used))
    return sorted(out, key=lambda c: (c.last_used, c.key))


def prune(
    cache_dir: Path,
    max_bytes: float,
    keep: set[str] | frozenset[str] = frozenset(),
    grace_s: float | None = None,
) -> list[str]:
    """Remove least recently used cached artifacts until the cache holds <= max_bytes.

    Never removed: the keys in `keep` (what this process serves) and artifacts used in the
    last `grace_s` seconds (default CACHE_GRACE_S: a job may have just resolved one and be
    reading it). A removed artifact is renamed out of the cache before it is deleted, so a
    reader sees it whole or not at all and fetches it again from the store. Returns the
    removed keys.
    """
    if max_bytes <= 0:
        return []
    grace_s = CACHE_GRACE_S if grace_s is None else grace_s
    entries = cached(cache_dir)
    total = sum(c.size for c in entries)
    removed: list[str] = []
    now = datetime.now(timezone.utc).timestamp()
    for c in entries:
        if total <= max_bytes:
            break
        if c.key in keep or now - c.last_used < grace_s:
            continue
        gone = cache_dir / ".tmp" / f"evicted-{uuid.uuid4().hex[:12]}"
        gone.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(c.path, gone)
        except OSError:
            continue  # removed or replaced meanwhile
        shutil.rmtree(gone, ignore_errors=True)
        total -= c.size
        removed.append(c.key)
    if removed:
        logger.info(
            "artifact cache %s: removed %d least recently used (%s); %.1f MB left",
            cache_dir,
            len(removed),
            ", ".join(removed),
            total / 1e6,
        )
    return removed
