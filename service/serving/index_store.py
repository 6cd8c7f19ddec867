"""The read side of serving: hold the published bundle (and an experiment's arms) and
hot-swap them when the pointers move.

The active pointer (an ActiveModel record: model_id, bundle_dir, published_at) is the
truth; a message on the registry's serving events is only a hint to look at it now. A
watcher thread waits for such a hint at most `settings.reload_poll_s` and then re-reads the
pointer either way, so a lost message or a Redis outage only delays a swap, never breaks
serving. The running experiment (an Experiment record, service/serving/experiment.py) is
read in the same round trip (ServingRegistry.serving_state): when it changes, every arm's
bundle is loaded (a bundle already loaded, the active one or a previous arm's, is reused),
and only then swapped in.

A pointer's `bundle_dir` is a local path, or a URL in the shared artifact store
(UNKD_ARTIFACT_URL, service/core/artifacts.py): such a bundle is fetched into this host's
cache and verified against its manifest before it is loaded, so a replica on another host,
or one started later, serves the same bundle. Arms resolve their `bundle_dir` the same way.

Swapping is one attribute assignment of an immutable `LoadedBundle` record holding the
active model and the experiment's arms: a request that read `store.snapshot()` keeps its
models to the end, and an old bundle is freed when the last such request drops it. The
live bundles are never mutated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from service.core.artifacts import ArtifactError, ArtifactStore
from service.core.bundle_format import BundleError
from service.core.config import Settings
from service.core.records import Experiment, ServingState
from service.core.serving_registry import ServingRegistry
from service.serving.bundle import ServingBundle, load_bundle
from service.serving.experiment import LoadedExperiment, cumulative_weights
from service.serving.exposure.counter import ExposureCounter, Tally
from service.serving.gc_policy import arm_warm_freeze, freeze_long_lived
from service.serving.search_path import use_fastest_path
from service.serving.served_model import ServedModel

logger = logging.getLogger(__name__)

# A pointer whose bundle failed to load is retried no more often than this: the files may
# still be arriving on a shared volume, but a broken bundle must not be reloaded every poll.
RETRY_FAILED_S = 30.0


class ArmLoadError(RuntimeError):
    """An experiment arm whose bundle cannot be loaded: `index` and `model_id` name it."""

    def __init__(self, index: int, model_id: str, bundle_dir: str, reason: Exception) -> None:
        self.index, self.model_id, self.bundle_dir, self.reason = (
            index,
            model_id,
            bundle_dir,
            reason,
        )
        super().__init__(f"arm {index} ({model_id}): cannot load its bundle {bundle_dir}: {reason}")


@dataclass(frozen=True)
class LoadedBundle:
    """What one swap installs: the active model's bundle, the pointer it came from, when,
    and the running experiment's arms (None: no experiment)."""

    bundle: ServingBundle
    pointer: dict[str, Any]
    loaded_at: datetime
    active: ServedModel
    experiment: LoadedExperiment | None = None

    def named(self, model_id: str) -> ServedModel | None:
        """The served model called `model_id` (an arm first, then the active one), or None."""
        if self.experiment is not None:
            arm = self.experiment.arm_named(model_id)
            if arm is not None:
                return arm
        return self.active if self.active.model_id == model_id else None

    def models(self) -> list[ServedModel]:
        """Every model served: the arms, then the active model unless it is an arm."""
        if self.experiment is None:
            return [self.active]
        arms = list(self.experiment.arms)
        ids = {a.model_id for a in arms}
        return arms + ([self.active] if self.active.model_id not in ids else [])


def _pointer_key(pointer: dict[str, Any]) -> tuple[str, str, str]:
    return (
        str(pointer.get("model_id")),
        str(pointer.get("bundle_dir")),
        str(pointer.get("published_at")),
    )


class IndexStore:
    """Holds the serving bundle of the active model for one API process.

    Args:
        settings: data_dir (relative bundle_dir values resolve against it), artifact_url
            (bundle_dir URLs are fetched from that store into the local cache first), nprobe,
            hnsw_ef_search and reload_poll_s are used.
        registry: where the pointer and the experiment are read; None gives a static
            store, filled only by `load_now` and `apply_experiment` (bench, tests).
        exposure: the process's exposure counter; None: answers are not counted.
    """

    def __init__(
        self,
        settings: Settings,
        registry: ServingRegistry | None = None,
        exposure: ExposureCounter | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.exposure = exposure
        self.artifacts = ArtifactStore.from_settings(settings)
        self._state: LoadedBundle | None = None
        self._load_lock = (
            threading.Lock()
        )  # one load at a time (watcher vs load_now vs experiment routes)
        self._failed: tuple[tuple[str, str, str], float] | None = None
        self._failed_experiment: tuple[str, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis_down = False
        self.blas_min_batch: int | None = None  # what the last load measured (search_path)

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
        """Bundle, pointer, load time and experiment read together (consistent across a swap)."""
        return self._state

    @property
    def experiment(self) -> LoadedExperiment | None:
        state = self._state
        return state.experiment if state is not None else None

    @property
    def pointer(self) -> dict[str, Any] | None:
        state = self._state
        return dict(state.pointer) if state is not None else None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load the active model (if any) now, then watch for changes in a daemon thread."""
        if self.registry is None:
            logger.info("index store: no registry, serving only what load_now() gives it")
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
                bundle_dir,
                nprobe=self.settings.nprobe,
                ef_search=self.settings.hnsw_ef_search,
                mmap=self.settings.serving_mmap,
            )
            if bundle.model_id != pointer.get("model_id"):
                raise BundleError(
                    f"{bundle_dir}: holds model {bundle.model_id}, pointer names {pointer.get('model_id')}"
                )
            self._tune_search_path(bundle)
            previous = self.current
            old = self._state
            active = self._served(bundle, "active", None, str(pointer.get("published_at")))
            self._state = LoadedBundle(
                bundle,
                dict(pointer),
                datetime.now(timezone.utc),
                active,
                old.experiment if old is not None else None,
            )  # the swap
            self._failed = None
        logger.info(
            "serving model %s (%s, %d items) loaded in %.2fs, replacing %s",
            bundle.model_id,
            bundle.meta.get("factory"),
            bundle.n_items,
            time.perf_counter() - t0,
            previous.model_id if previous else "nothing",
        )
        if self.settings.serving_gc_freeze:  # the new bundle leaves the collector's walks
            freeze_long_lived(f"model {bundle.model_id} loaded")
            arm_warm_freeze()  # and what its first answers make (gc_policy)
        self.prune_cache()
        return bundle

    def check_pointer(self) -> bool:
        """Read the active pointer and the experiment once; load what differs from what is served.

        Returns True when something new was swapped in. Redis errors propagate to the
        watcher; load errors are logged and the current bundles keep serving.
        """
        assert self.registry is not None
        stored = self.registry.serving_state()
        swapped = self._check_active(stored)
        return self._check_experiment(stored) or swapped

    def _check_active(self, stored: ServingState) -> bool:
        try:
            active = stored.active()
        except ValidationError as exc:
            logger.error("active model pointer %r is not readable: %s", stored.active_json, exc)
            return False
        if active is None:
            return False
        pointer = active.model_dump(mode="json")  # the stored text's values (published_at too)
        key = _pointer_key(pointer)
        state = self._state
        if state is not None and _pointer_key(state.pointer) == key:
            return False
        failed = self._failed
        if (
            failed is not None
            and failed[0] == key
            and time.monotonic() - failed[1] < RETRY_FAILED_S
        ):
            return False
        try:
            self.load_now(pointer)
        except (BundleError, ArtifactError, OSError, ValueError) as exc:
            self._failed = (key, time.monotonic())
            logger.error(
                "cannot load published model %s (%s); still serving %s",
                pointer.get("model_id"),
                exc,
                state.bundle.model_id if state else "nothing",
            )
            return False
        return True

    def _check_experiment(self, stored: ServingState) -> bool:
        """Install the stored experiment (or its end) when it differs from the served one."""
        raw = stored.experiment_json
        state = self._state
        if state is None:  # arms are installed beside an active model, once one is loaded
            return False
        served = state.experiment.raw if state.experiment is not None else None
        if raw == served:
            return False
        failed = self._failed_experiment
        if (
            raw is not None
            and failed is not None
            and failed[0] == raw
            and time.monotonic() - failed[1] < RETRY_FAILED_S
        ):
            return False
        try:
            self.apply_experiment(stored.experiment(), raw=raw)
        except (ValidationError, ArmLoadError) as exc:
            self._failed_experiment = (raw or "", time.monotonic())
            logger.error(
                "cannot serve the stored experiment (%s); still serving %s",
                exc,
                "its previous arms" if state.experiment is not None else "the active model alone",
            )
            return False
        return True

    def apply_experiment(
        self,
        spec: Experiment | None,
        *,
        raw: str | None = None,
        commit: Callable[[], None] | None = None,
    ) -> LoadedExperiment | None:
        """Load every arm of `spec` (None: end the experiment), then swap them in.

        Under the load lock: the arms are loaded (and so verified: checksums, shapes), then
        `commit()` runs (the route stores the experiment there), then the swap. An arm
        that cannot be loaded raises ArmLoadError before `commit`, and nothing changes.
        With no active model loaded yet the arms are verified and committed, and the
        watcher installs them once the active model loads.

        Args:
            raw: the stored JSON (default: spec.model_dump_json()); the watcher compares it.
        """
        if spec is not None and raw is None:
            raw = spec.model_dump_json()
        with self._load_lock:
            state = self._state
            loaded = self._load_arms(spec, raw or "", state) if spec is not None else None
            if commit is not None:
                commit()
            if state is not None:
                self._state = replace(state, experiment=loaded)  # the swap
            self._failed_experiment = None
        if loaded is not None:
            logger.info(
                "experiment: serving %s (salt %r)",
                ", ".join(f"{a.model_id} {a.weight:g}" for a in loaded.arms),
                loaded.spec.salt,
            )
        else:
            logger.info("experiment: none; the active model serves everyone")
        if self.settings.serving_gc_freeze:
            freeze_long_lived("experiment arms loaded")
            arm_warm_freeze()
        return loaded

    def _load_arms(
        self, spec: Experiment, raw: str, state: LoadedBundle | None
    ) -> LoadedExperiment:
        """Each arm's ServedModel, reusing bundles already loaded from the same directory."""
        loaded: dict[tuple[str, Path], ServedModel] = {}
        if state is not None:
            loaded[(state.active.model_id, self._resolve(state.pointer).resolve())] = state.active
            for served in state.experiment.arms if state.experiment is not None else ():
                loaded.setdefault((served.model_id, served.bundle.path.resolve()), served)
        since = spec.started_at.isoformat()
        arms = []
        for i, arm in enumerate(spec.arms):
            try:
                where = self._resolve({"bundle_dir": arm.bundle_dir})
                have = loaded.get((arm.model_id, where.resolve()))
                if have is not None and have.role == "active":  # the active model's epoch runs on
                    arms.append(ServedModel(have.bundle, "arm", arm.weight, have.tally))
                    continue
                bundle = (
                    have.bundle if have is not None else self._load_arm_bundle(where, arm.model_id)
                )
            except (BundleError, ArtifactError, OSError, ValueError) as exc:
                raise ArmLoadError(i, arm.model_id, arm.bundle_dir, exc) from exc
            arms.append(self._served(bundle, "arm", arm.weight, since))
        return LoadedExperiment(
            spec, raw, tuple(arms), cumulative_weights([a.weight for a in spec.arms])
        )

    def _load_arm_bundle(self, where: Path, model_id: str) -> ServingBundle:
        t0 = time.perf_counter()
        bundle = load_bundle(
            where,
            nprobe=self.settings.nprobe,
            ef_search=self.settings.hnsw_ef_search,
            mmap=self.settings.serving_mmap,
        )
        if bundle.model_id != model_id:
            raise BundleError(f"{where}: holds model {bundle.model_id}, the arm names {model_id}")
        self._tune_search_path(bundle)
        logger.info(
            "experiment arm %s (%d items) loaded in %.2fs",
            model_id,
            bundle.n_items,
            time.perf_counter() - t0,
        )
        return bundle

    def _tune_search_path(self, bundle: ServingBundle) -> None:
        """Send the batches that faiss's BLAS path searches faster than its scan down it
        (measured on this CPU, service/serving/search_path.py): coalesced batches read the
        matrix once."""
        self.blas_min_batch = use_fastest_path(bundle.index, bundle.user_emb[:8])

    def _served(
        self,
        bundle: ServingBundle,
        role: Literal["active", "arm"],
        weight: float | None,
        since: str,
    ) -> ServedModel:
        tally = (
            self.exposure.tally(bundle, since)
            if self.exposure is not None
            else Tally(bundle, since, None)
        )
        return ServedModel(bundle, role, weight, tally)

    def prune_cache(self) -> list[str]:
        """Keep the fetched-bundle cache under settings.artifact_cache_max_mb (URL mode), never
        removing a bundle this process serves (the active model, experiment arms)."""
        state = self._state
        serving = []
        if state is not None:
            serving.append(str(state.pointer.get("bundle_dir", "")))
            if state.experiment is not None:
                serving += [arm.bundle_dir for arm in state.experiment.spec.arms]
        keep = {key for key in map(self.artifacts.key_of, serving) if key is not None}
        try:
            return self.artifacts.prune_cache(self.settings.artifact_cache_max_mb * 2**20, keep)
        except OSError as exc:  # a cache that cannot be pruned still serves
            logger.warning("artifact cache: pruning failed (%s)", exc)
            return []

    # -- internals ---------------------------------------------------------------------------
    def _resolve(self, pointer: dict[str, Any]) -> Path:
        """The pointer's bundle as a local directory: a path, or a store URL fetched (and
        verified) into the local cache; a cached bundle is not fetched again."""
        if not pointer.get("bundle_dir"):
            raise BundleError(f"pointer has no bundle_dir: {pointer!r}")
        return self.artifacts.resolve(str(pointer["bundle_dir"]))

    def _watch(self) -> None:
        """Wait for a publish message (at most reload_poll_s), then re-read the pointer."""
        import redis as redis_lib  # the API has Redis; the static store never gets here

        assert self.registry is not None
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.registry.serving_events()
                pubsub.get_message(timeout=self.settings.reload_poll_s)
                self.check_pointer()
                if self._redis_down:
                    self._redis_down = False
                    logger.info("index store: Redis reachable again")
            except (redis_lib.RedisError, OSError) as exc:
                if not self._redis_down:
                    self._redis_down = True
                    logger.warning(
                        "index store: Redis unreachable (%s); serving the loaded model", exc
                    )
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
