"""The read side of serving: hold the published bundle and hot-swap it when the pointer moves.

The active pointer (keys.ACTIVE_MODEL, JSON {"model_id", "bundle_dir", "published_at"}) is
the truth; a message on keys.SERVING_EVENTS is only a hint to look at it now. A watcher
thread waits for such a hint at most `settings.reload_poll_s` and then re-reads the pointer
either way, so a lost message or a Redis outage only delays a swap, never breaks serving.

Swapping is one attribute assignment of an immutable `LoadedBundle` record: a request that
read `store.current` keeps its bundle to the end, and the old bundle is freed when the
last such request drops it. The live bundle is never mutated.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.core import keys
from service.core.bundle_format import BundleError
from service.core.config import Settings
from service.serving.bundle import ServingBundle, load_bundle, use_blas_for_batches

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

# A pointer whose bundle failed to load is retried no more often than this: the files may
# still be arriving on a shared volume, but a broken bundle must not be reloaded every poll.
RETRY_FAILED_S = 30.0


@dataclass(frozen=True)
class LoadedBundle:
    """What one swap installs: the bundle, the pointer it came from, and when."""

    bundle: ServingBundle
    pointer: dict[str, Any]
    loaded_at: datetime


def _pointer_key(pointer: dict[str, Any]) -> tuple[str, str, str]:
    return (str(pointer.get("model_id")), str(pointer.get("bundle_dir")), str(pointer.get("published_at")))


class IndexStore:
    """Holds the serving bundle of the active model for one API process.

    Args:
        settings: data_dir (relative bundle_dir values resolve against it), nprobe,
            hnsw_ef_search and reload_poll_s are used.
        redis_client: None gives a static store, filled only by `load_now` (bench, tests).
    """

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self._state: LoadedBundle | None = None
        self._load_lock = threading.Lock()  # one load at a time (watcher vs load_now)
        self._failed: tuple[tuple[str, str, str], float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis_down = False

    # -- what requests read --------------------------------------------------------------
    @property
    def current(self) -> ServingBundle | None:
        state = self._state
        return state.bundle if state is not None else None

    @property
    def ready(self) -> bool:
        return self._state is not None

    @property
    def loaded_at(self) -> datetime | None:
        state = self._state
        return state.loaded_at if state is not None else None

    def snapshot(self) -> LoadedBundle | None:
        """Bundle, pointer and load time read together (consistent across a swap)."""
        return self._state

    @property
    def pointer(self) -> dict[str, Any] | None:
        state = self._state
        return dict(state.pointer) if state is not None else None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load the active model (if any) now, then watch for changes in a daemon thread."""
        if self.redis is None:
            logger.info("index store: no Redis client, serving only what load_now() gives it")
            return
        self.check_pointer()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="index-store-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.reload_poll_s + 2.0)
            self._thread = None

    def load_now(self, pointer: dict[str, Any]) -> ServingBundle:
        """Load the pointer's bundle and swap it in; on BundleError the old one stays."""
        with self._load_lock:
            bundle_dir = self._resolve(pointer)
            t0 = time.perf_counter()
            bundle = load_bundle(
                bundle_dir, nprobe=self.settings.nprobe, ef_search=self.settings.hnsw_ef_search
            )
            if bundle.model_id != pointer.get("model_id"):
                raise BundleError(
                    f"{bundle_dir}: holds model {bundle.model_id}, pointer names {pointer.get('model_id')}"
                )
            use_blas_for_batches(bundle.index.d)  # coalesced batches read the matrix once
            previous = self.current
            self._state = LoadedBundle(bundle, dict(pointer), datetime.now(timezone.utc))  # the swap
            self._failed = None
        logger.info(
            "serving model %s (%s, %d items) loaded in %.2fs, replacing %s",
            bundle.model_id, bundle.meta.get("factory"), bundle.n_items,
            time.perf_counter() - t0, previous.model_id if previous else "nothing",
        )  # fmt: skip
        return bundle

    def check_pointer(self) -> bool:
        """Read the active pointer once; load it when it differs from what is served.

        Returns True when a new bundle was swapped in. Redis errors propagate to the
        watcher; load errors are logged and the current bundle keeps serving.
        """
        assert self.redis is not None
        raw = self.redis.get(keys.ACTIVE_MODEL)
        if raw is None:
            return False
        try:
            pointer = json.loads(raw)
            key = _pointer_key(pointer)
        except (ValueError, AttributeError) as exc:
            logger.error("active model pointer %r is not valid JSON: %s", raw, exc)
            return False
        state = self._state
        if state is not None and _pointer_key(state.pointer) == key:
            return False
        failed = self._failed
        if failed is not None and failed[0] == key and time.monotonic() - failed[1] < RETRY_FAILED_S:
            return False
        try:
            self.load_now(pointer)
        except (BundleError, OSError, ValueError) as exc:
            self._failed = (key, time.monotonic())
            logger.error(
                "cannot load published model %s (%s); still serving %s",
                pointer.get("model_id"), exc, state.bundle.model_id if state else "nothing",
            )  # fmt: skip
            return False
        return True

    # -- internals ---------------------------------------------------------------------------
    def _resolve(self, pointer: dict[str, Any]) -> Path:
        if not pointer.get("bundle_dir"):
            raise BundleError(f"active model pointer has no bundle_dir: {pointer!r}")
        path = Path(pointer["bundle_dir"])
        return path if path.is_absolute() else self.settings.data_dir / path

    def _watch(self) -> None:
        """Wait for a publish message (at most reload_poll_s), then re-read the pointer."""
        import redis as redis_lib  # the API has Redis; the static store never gets here

        assert self.redis is not None
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(keys.SERVING_EVENTS)
                pubsub.get_message(timeout=self.settings.reload_poll_s)
                self.check_pointer()
                if self._redis_down:
                    self._redis_down = False
                    logger.info("index store: Redis reachable again")
            except (redis_lib.RedisError, OSError) as exc:
                if not self._redis_down:
                    self._redis_down = True
                    logger.warning("index store: Redis unreachable (%s); serving the loaded model", exc)
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except (redis_lib.RedisError, OSError):
                        pass
                    pubsub = None
                self._stop.wait(self.settings.reload_poll_s)
            except Exception:  # never let the watcher die: serving must keep reloading
                logger.exception("index store watcher: unexpected error")
                self._stop.wait(self.settings.reload_poll_s)
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis_lib.RedisError, OSError):
                pass
