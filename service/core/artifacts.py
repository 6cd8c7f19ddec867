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
  API processes after each bundle swap).

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

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from service.core.config import Settings

logger = logging.getLogger(__name__)

MANIFEST_FILE = (
    "_artifact.json"  # not manifest.json: a model directory has one (and macOS folds case)
)
MANIFEST_FORMAT = 1
CACHE_SUBDIR = Path("cache") / "artifacts"
SCRATCH = "scratch"  # keys a job writes for itself and deletes when it ends (delete_scratch)
CACHE_GRACE_S = 600.0  # an artifact used this recently is never pruned (a reader may hold it)
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_KEY = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*$")  # relative, no "..", no empty segment


class ArtifactError(RuntimeError):
    """An artifact that cannot be stored or read; the message names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"artifact {key}: {reason}")


class ArtifactNotFoundError(ArtifactError):
    """No complete artifact under the key (no manifest: absent, or still being written)."""


class ArtifactCorruptError(ArtifactError):
    """A stored file that does not match the manifest (size, sha256, missing, unreadable)."""


class ArtifactExistsError(ArtifactError):
    """A put of different content onto a key that is already written."""


def bundle_key(model_id: str, job_id: str) -> str:
    """The key of the serving bundle a publish job builds (one per publish)."""
    return f"bundles/{model_id}-{job_id[:8]}"


def dataset_key(dataset_id: str) -> str:
    """The key of a prepared dataset (written once by the API that registered it)."""
    return f"datasets/{dataset_id}"


def model_key(model_id: str) -> str:
    """The key of a trained model directory, teacher or student (written once by its job)."""
    return f"models/{model_id}"


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ArtifactError(
            key, "not a valid key (relative segments of letters, digits, '.', '_', '-')"
        )
    return key


# -- manifests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a complete artifact holds: every file (relative posix name) with size and sha256."""

    key: str
    files: dict[str, FileEntry]
    created_at: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "key": self.key,
                "created_at": self.created_at,
                "files": {
                    n: {"size": e.size, "sha256": e.sha256} for n, e in sorted(self.files.items())
                },
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, key: str, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            files = {
                str(n): FileEntry(int(e["size"]), str(e["sha256"]))
                for n, e in data["files"].items()
            }
            created_at = str(data.get("created_at", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactCorruptError(key, f"unreadable {MANIFEST_FILE} ({exc!r})") from exc
        for name in files:
            if not _KEY.match(name) or name == MANIFEST_FILE:
                raise ArtifactCorruptError(
                    key, f"{MANIFEST_FILE} lists an unsafe file name {name!r}"
                )
        return cls(key, files, created_at)


@dataclass(frozen=True)
class CachedArtifact:
    """One artifact in a host's cache: its key, directory, bytes and last use (epoch s)."""

    key: str
    path: Path
    size: int
    last_used: float


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves; it just ages as written


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def scan_dir(src: Path, key: str) -> Manifest:
    """The manifest of a local directory: every regular file below it, sizes and sha256."""
    src = Path(src)
    if not src.is_dir():
        raise ArtifactError(key, f"{src} is not a directory")
    files: dict[str, FileEntry] = {}
    for path in sorted(src.rglob("*")):
        if path.is_dir():
            continue
        name = path.relative_to(src).as_posix()
        if path.is_symlink() or not path.is_file():
            raise ArtifactError(key, f"{path}: only regular files can be stored")
        if name == MANIFEST_FILE or not _KEY.match(name):
            raise ArtifactError(key, f"{path}: file name {name!r} cannot be stored")
        files[name] = FileEntry(path.stat().st_size, _sha256(path))
    if not files:
        raise ArtifactError(key, f"{src} holds no files")
    return Manifest(key, files, datetime.now(timezone.utc).isoformat())


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
        if self._cached(key, dest):  # cached already (a redelivered job): the local copy goes
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
        if self._cached(key, dest):
            _touch(dest / MANIFEST_FILE)  # its last use, for prune_cache
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
                digest = _sha256(local)
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

    # -- the cache's size ----------------------------------------------------------------------
    def cached(self) -> list[CachedArtifact]:
        """The complete artifacts in this host's cache, least recently used first (URL mode;
        the data-dir mode has no cache: [])."""
        if self.in_place or not self.cache_dir.is_dir():
            return []
        out = []
        for marker in self.cache_dir.rglob(MANIFEST_FILE):
            where = marker.parent
            key = where.relative_to(self.cache_dir).as_posix()
            if key.startswith(".tmp/") or not _KEY.match(key):
                continue
            try:
                manifest = Manifest.from_json(key, marker.read_bytes())
                used = marker.stat().st_mtime
            except (ArtifactError, OSError):
                continue  # a damaged copy: _cached removes it on its next use
            out.append(
                CachedArtifact(key, where, sum(e.size for e in manifest.files.values()), used)
            )
        return sorted(out, key=lambda c: (c.last_used, c.key))

    def prune_cache(
        self,
        max_bytes: float,
        keep: set[str] | frozenset[str] = frozenset(),
        grace_s: float | None = None,
    ) -> list[str]:
        """Remove least recently used cached artifacts until the cache holds <= max_bytes.

        Never removed: the keys in `keep` (what this process serves) and artifacts used in the
        last `grace_s` seconds (default CACHE_GRACE_S: a job may have just resolved one and be
        reading it). A removed
        artifact is renamed out of the cache before it is deleted, so a reader sees it whole
        or not at all and fetches it again from the store. The data-dir mode never prunes: its
        "cache" is the store itself. Returns the removed keys.
        """
        if self.in_place or max_bytes <= 0:
            return []
        grace_s = CACHE_GRACE_S if grace_s is None else grace_s
        entries = self.cached()
        total = sum(c.size for c in entries)
        removed: list[str] = []
        now = datetime.now(timezone.utc).timestamp()
        for c in entries:
            if total <= max_bytes:
                break
            if c.key in keep or now - c.last_used < grace_s:
                continue
            gone = self.cache_dir / ".tmp" / f"evicted-{uuid.uuid4().hex[:12]}"
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
                self.cache_dir,
                len(removed),
                ", ".join(removed),
                total / 1e6,
            )
        return removed

    def _cached(self, key: str, dest: Path) -> bool:
        """A cached copy is complete (renamed in after verification) and whole (sizes match
        its manifest); one that is not is removed, to be fetched again."""
        marker = dest / MANIFEST_FILE
        if not marker.is_file():
            return False
        try:
            manifest = Manifest.from_json(key, marker.read_bytes())
            whole = all(
                (dest / n).is_file() and (dest / n).stat().st_size == e.size
                for n, e in manifest.files.items()
            )
        except (ArtifactError, OSError):
            whole = False
        if not whole:
            logger.warning("artifact %s: cached copy %s is damaged; fetching it again", key, dest)
            shutil.rmtree(dest, ignore_errors=True)
        return whole
