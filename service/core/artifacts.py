"""Where artifacts live: this host's data dir, or an object store that several hosts share.

An *artifact* is a directory of files stored under a versioned key, e.g. a serving bundle
at ``bundles/<model_id>-<job id[:8]>``. Keys are written once and never change: that is
what lets a reader cache an artifact forever and a writer retry without coordination.
Serving bundles, prepared datasets (``datasets/<dataset id>``) and trained model directories
(``models/<model id>``, with their report.json and manifest.json) go through this store: a
record or pointer holds `location(key)`, and a reader calls `resolve(location)`.

One class, two modes, picked by ``settings.artifact_url`` (UNKD_ARTIFACT_URL):

- **unset: the data dir itself** (`in_place`). An artifact is built at ``<data_dir>/<key>``
  by an atomic rename (training.artifacts.atomic_dir), as before this module existed: `put`
  of the directory already there copies nothing, `fetch` returns that path, and
  `location(key)` is the absolute path the serving pointers have always held.
- **an fsspec URL** (``s3://bucket/prefix`` through s3fs, ``file:///mnt/shared`` ...). An
  object store has no atomic directory rename, so completeness is a marker written last:
  `put` uploads every file, then ``_artifact.json`` (each file's size and sha256). A key
  without that manifest is absent: a writer that died mid-upload leaves nothing visible, and
  its retry uploads over the leftovers. `fetch` downloads into a temp directory under
  ``<data_dir>/cache/artifacts``, checks every size and sha256 against the manifest, and only
  then renames it to ``cache/artifacts/<key>``; a later fetch of the key reuses that copy
  without asking the store. `prune_cache` keeps that cache under
  ``settings.artifact_cache_max_mb``, least recently used first (workers after each job,
  API processes after each bundle swap): service/core/artifact_cache.py. Keys, manifests
  and the errors are service/core/artifact_manifest.py, which both build on.

`put` onto a key already written is a no-op when the content is the same (same names, sizes
and checksums: a redelivered job) and raises ArtifactExistsError otherwise; nothing is
ever overwritten.

Pointers (keys.ACTIVE_MODEL, the publish history, experiment arms) hold `location(key)`:
the path (data-dir mode, unchanged) or the URL ``<artifact_url>/<key>``. `resolve` turns
either into a verified local directory, fetching it first when it is a URL.

S3: s3fs (through botocore) reads the endpoint and credentials from the standard AWS
variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), so AWS,
MinIO and other S3-speaking servers need nothing here; the bucket must exist. S3 has had
strong read-after-write consistency since December 2020: a reader that sees the manifest
sees every file uploaded before it.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.core import artifact_cache
from service.core.artifact_cache import CACHE_SUBDIR, CachedArtifact
from service.core.artifact_manifest import (
    MANIFEST_FILE,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    Manifest,
    check_key,
    scan_dir,
    sha256_of,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from service.core.config import Settings

logger = logging.getLogger(__name__)

SCRATCH = "scratch"  # keys a job writes for itself and deletes when it ends (delete_scratch)

__all__ = [  # the store's names, with those of the modules below it that its callers use
    "MANIFEST_FILE",
    "SCRATCH",
    "ArtifactCorruptError",
    "ArtifactError",
    "ArtifactExistsError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "CachedArtifact",
    "Manifest",
    "bundle_key",
    "check_key",
    "dataset_key",
    "model_key",
    "scan_dir",
]


def bundle_key(model_id: str, job_id: str) -> str:
    """The key of the serving bundle a publish job builds (one per publish)."""
    return f"bundles/{model_id}-{job_id[:8]}"


def dataset_key(dataset_id: str) -> str:
    """The key of a prepared dataset (written once by the API that registered it)."""
    return f"datasets/{dataset_id}"


def model_key(model_id: str) -> str:
    """The key of a trained model directory, teacher or student (written once by its job)."""
    return f"models/{model_id}"


# -- the store ---------------------------------------------------------------------------------


class ArtifactStore:
    """Artifacts under write-once keys, in the data dir or behind an fsspec URL.

    Args:
        url: "" for the data dir itself, else an fsspec URL (s3://bucket/prefix, file:///path).
        data_dir: this process's data dir (the data-dir mode's root; holds the fetch cache).
        cache_dir: where fetched artifacts are kept (default <data_dir>/cache/artifacts).
    """

    def __init__(self, url: str, data_dir: Path, *, cache_dir: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.data_dir / CACHE_SUBDIR
        self._fs: tuple[AbstractFileSystem, str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(settings.artifact_url, settings.data_dir)

    @property
    def in_place(self) -> bool:
        """True in the data-dir mode: artifacts are files of this host, nothing is copied."""
        return not self.url

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url or str(self.data_dir)!r})"

    # -- where keys are ------------------------------------------------------------------------
    def location(self, key: str) -> str:
        """What a pointer records for `key`: an absolute path (data dir) or `<url>/<key>`."""
        check_key(key)
        return str((self.data_dir / key).resolve()) if self.in_place else f"{self.url}/{key}"

    def key_of(self, location: str) -> str | None:
        """The key of a location URL in this store; None for a URL elsewhere (or a path)."""
        if self.in_place or not location.startswith(self.url + "/"):
            return None
        return check_key(location[len(self.url) + 1 :])

    def resolve(self, location: str) -> Path:
        """A pointer's location as a local directory: a path as it is (relative: under the
        data dir), a URL of this store fetched (verified) into the cache.

        Raises:
            ArtifactError: a URL of another store (naming both), or any fetch error.
        """
        if "://" not in location:
            path = Path(location)
            return path if path.is_absolute() else self.data_dir / path
        key = self.key_of(location)
        if key is None:
            raise ArtifactError(
                location,
                (
                    f"not in this process's artifact store ({self.url or 'none: UNKD_ARTIFACT_URL is unset'}); "
                    "every API and worker process needs the same UNKD_ARTIFACT_URL"
                ),
            )
        return self.fetch(key)

    # -- the remote side -----------------------------------------------------------------------
    def _remote(self) -> tuple[AbstractFileSystem, str]:
        """The fsspec filesystem and root path, made on first use (never at import)."""
        if self._fs is None:
            import fsspec  # the data-dir mode never needs it
            from fsspec.utils import get_protocol

            options: dict[str, Any] = (
                {"auto_mkdir": True} if get_protocol(self.url) in ("file", "local") else {}
            )
            # No listings cache: s3fs answers a file's size (which cat_file asks first) from a
            # cached listing of its directory, so a manifest written after that listing read as
            # absent (a fanned-out job's shard, listed half-uploaded, then fetched: seen in CI).
            fs, root = fsspec.core.url_to_fs(self.url, use_listings_cache=False, **options)
            self._fs = (fs, root.rstrip("/"))
        return self._fs

    def _path(self, key: str, name: str | None = None) -> str:
        root = self._remote()[1]
        return f"{root}/{key}" + (f"/{name}" if name is not None else "")

    def manifest(self, key: str) -> Manifest:
        """The manifest of a complete remote artifact.

        Raises:
            ArtifactNotFoundError: no manifest under the key (absent or still being written).
        """
        check_key(key)
        fs = self._remote()[0]
        try:
            raw = fs.cat_file(self._path(key, MANIFEST_FILE))
        except FileNotFoundError:
            raise ArtifactNotFoundError(
                key, f"not in {self.url} (no {MANIFEST_FILE}: absent or still being written)"
            ) from None
        return Manifest.from_json(key, raw)

    def exists(self, key: str) -> bool:
        """Whether `key` holds a complete artifact."""
        if self.in_place:
            return (self.data_dir / check_key(key)).is_dir()
        try:
            self.manifest(key)
        except ArtifactNotFoundError:
            return False
        return True

    def put(self, key: str, src: Path) -> Manifest | None:
        """Store the directory `src` under `key`, once.

        Data dir: `src` already at the key's place copies nothing; elsewhere it is copied in
        and renamed into place. URL: every file is uploaded, then the manifest, last.
        A key already written: no-op if it holds the same files (names, sizes, sha256).

        Returns:
            URL: the manifest of `src` (what the key holds); data dir: None (nothing scanned).

        Raises:
            ArtifactExistsError: the key holds different content.
        """
        check_key(key)
        src = Path(src)
        if self.in_place:
            self._put_in_place(key, src)
            return None
        local = scan_dir(src, key)
        try:
            stored = self.manifest(key)
        except ArtifactNotFoundError:
            stored = None
        if stored is not None:
            self._same_or_raise(key, local, stored)
            return local
        fs = self._remote()[0]
        for name in local.files:
            fs.put_file(str(src / name), self._path(key, name))
        fs.pipe_file(self._path(key, MANIFEST_FILE), local.to_json())  # last: now the key exists
        logger.info(
            "artifact %s: stored %d files (%d bytes) in %s",
            key,
            len(local.files),
            sum(e.size for e in local.files.values()),
            self.url,
        )
        return local

    def commit(self, key: str, src: Path) -> str:
        """Store the directory `src`, built on this host, under `key`; returns the location a
        record holds.

        Data dir: `put` (`src` built at the key's place: nothing copied), and the location is
        its path, as records always held. URL: `put`, then `src` becomes this host's cached
        copy of the key (its manifest added, renamed into the cache): nothing is left outside
        the cache, and this host never downloads what it just uploaded.
        """
        manifest = self.put(key, src)
        if manifest is not None:
            self._adopt(key, Path(src), manifest)
        return self.location(key)

    def _adopt(self, key: str, src: Path, manifest: Manifest) -> None:
        dest = self.cache_dir / key
        if artifact_cache.whole(
            key, dest
        ):  # cached already (a redelivered job): the local copy goes
            shutil.rmtree(src, ignore_errors=True)
            return
        (src / MANIFEST_FILE).write_bytes(manifest.to_json())
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dest)
        except OSError as exc:  # another file system, or a fetch won a race: fetched when needed
            logger.info("artifact %s: local copy not moved into the cache (%s); removed", key, exc)
            shutil.rmtree(src, ignore_errors=True)

    def _put_in_place(self, key: str, src: Path) -> None:
        dest = self.data_dir / key
        if dest.exists() and dest.resolve() == src.resolve():
            return  # built where it belongs (atomically): nothing to copy
        if dest.exists():
            self._same_or_raise(key, scan_dir(src, key), scan_dir(dest, key))
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(src, tmp)
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not dest.exists():
                raise
            self._same_or_raise(key, scan_dir(src, key), scan_dir(dest, key))  # lost a race

    @staticmethod
    def _same_or_raise(key: str, local: Manifest, stored: Manifest) -> None:
        if local.files != stored.files:
            raise ArtifactExistsError(
                key,
                (
                    "already written with different content; keys are written once (a new version "
                    "needs a new key: a new publish, job or dataset)"
                ),
            )
        logger.info("artifact %s: already stored with the same content", key)

    # -- reading -------------------------------------------------------------------------------
    def fetch(self, key: str) -> Path:
        """A local directory holding the complete, verified artifact.

        Data dir: the key's directory. URL: the cached copy if there is one, else every file
        is downloaded into a temp directory, its size and sha256 checked against the
        manifest, and the directory renamed into the cache.

        Raises:
            ArtifactNotFoundError: no complete artifact under the key.
            ArtifactCorruptError: a file that does not match the manifest (nothing is cached).
        """
        check_key(key)
        if self.in_place:
            path = self.data_dir / key
            if not path.is_dir():
                raise ArtifactNotFoundError(key, f"{path} does not exist")
            return path
        dest = self.cache_dir / key
        if artifact_cache.whole(key, dest):
            artifact_cache.touch(dest / MANIFEST_FILE)  # its last use, for prune_cache
            return dest
        self._download(key, dest, self.cache_dir / ".tmp")
        return dest

    def fetch_into(self, key: str, dest: Path) -> Path:
        """A URL key downloaded and verified into `dest` (not the cache): a job's scratch that
        the job itself removes. The files land in a temp directory beside `dest`, renamed in
        only once each matches the manifest; an existing `dest` (another fetch won) is kept."""
        check_key(key)
        if self.in_place:
            raise ArtifactError(
                key, "fetch_into is for an artifact URL; the data dir is read in place"
            )
        if not (Path(dest) / MANIFEST_FILE).is_file():
            self._download(key, Path(dest), Path(dest).parent)
        return Path(dest)

    def _download(self, key: str, dest: Path, tmp_root: Path) -> None:
        """Every file of `key` into a temp directory under `tmp_root`, each size and sha256
        checked against the manifest, then the directory renamed to `dest`."""
        manifest = self.manifest(key)
        fs = self._remote()[0]
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = tmp_root / f".{key.replace('/', '_')}-{uuid.uuid4().hex[:8]}"
        try:
            for name, entry in manifest.files.items():
                local = tmp / name
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fs.get_file(self._path(key, name), str(local))
                except FileNotFoundError:
                    raise ArtifactCorruptError(
                        key, f"{name}: listed in the manifest, missing from {self.url}"
                    ) from None
                size = local.stat().st_size
                if size != entry.size:
                    raise ArtifactCorruptError(
                        key, f"{name}: {size} bytes, the manifest says {entry.size}"
                    )
                digest = sha256_of(local)
                if digest != entry.sha256:
                    raise ArtifactCorruptError(
                        key,
                        (
                            f"{name}: sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}… "
                            "(corrupt or modified in the store); not cached"
                        ),
                    )
            (tmp / MANIFEST_FILE).write_bytes(manifest.to_json())
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not (
                    dest / MANIFEST_FILE
                ).is_file():  # another fetch of the same key won: use its copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info(
            "artifact %s: fetched %d files from %s into %s",
            key,
            len(manifest.files),
            self.url,
            dest,
        )

    # -- scratch: one job's intermediate results, removed when the job ends --------------------
    def complete_keys(self, prefix: str) -> set[str]:
        """The keys under `prefix` that hold a complete artifact (their manifest is written),
        from one listing of the store (URL mode; the data dir: none)."""
        check_key(prefix)
        if self.in_place:
            return set()
        fs, root = self._remote()
        try:
            paths = fs.find(f"{root}/{prefix}")
        except FileNotFoundError:
            return set()
        tail = f"/{MANIFEST_FILE}"
        base = f"{root}/".lstrip("/")
        return {p.lstrip("/")[len(base) : -len(tail)] for p in paths if p.endswith(tail)}

    def delete_scratch(self, prefix: str) -> None:
        """Remove every object under `prefix`, which must start with "scratch/": artifacts are
        written once and never removed, a job's scratch is removed when the job ends."""
        check_key(prefix)
        if not prefix.startswith(SCRATCH + "/"):
            raise ArtifactError(prefix, f"only keys under {SCRATCH}/ are ever deleted")
        if self.in_place:
            shutil.rmtree(self.data_dir / prefix, ignore_errors=True)
            return
        fs, root = self._remote()
        try:
            fs.rm(f"{root}/{prefix}", recursive=True)
        except FileNotFoundError:
            pass

    # -- the cache's size (service/core/artifact_cache.py) --------------------------------------
    def cached(self) -> list[CachedArtifact]:
        """The complete artifacts in this host's cache, least recently used first (URL mode;
        the data-dir mode has no cache: [])."""
        return [] if self.in_place else artifact_cache.cached(self.cache_dir)

    def prune_cache(
        self,
        max_bytes: float,
        keep: set[str] | frozenset[str] = frozenset(),
        grace_s: float | None = None,
    ) -> list[str]:
        """artifact_cache.prune of this host's cache: least recently used first, down to
        max_bytes, never `keep` nor what was used in the last `grace_s` (default
        CACHE_GRACE_S). The data-dir mode never prunes: its "cache" is the store itself."""
        if self.in_place:
            return []
        return artifact_cache.prune(self.cache_dir, max_bytes, keep, grace_s)
