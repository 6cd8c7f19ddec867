"""What an artifact is made of, below the store: its keys, its manifest and its errors.

A complete artifact carries ``_artifact.json``, every file's size and sha256, written last
(service/core/artifacts.py explains why). The store (artifacts.py) and the host's cache of
fetched artifacts (artifact_cache.py) both read manifests, so they live here, under both.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MANIFEST_FILE = (
    "_artifact.json"  # not manifest.json: a model directory has one (and macOS folds case)
)
MANIFEST_FORMAT = 1
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
KEY_PATTERN = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*$")  # relative, no "..", no empty segment


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


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key) or any(part in (".", "..") for part in key.split("/")):
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
            if not KEY_PATTERN.match(name) or name == MANIFEST_FILE:
                raise ArtifactCorruptError(
                    key, f"{MANIFEST_FILE} lists an unsafe file name {name!r}"
                )
        return cls(key, files, created_at)


def sha256_of(path: Path) -> str:
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
        if name == MANIFEST_FILE or not KEY_PATTERN.match(name):
            raise ArtifactError(key, f"{path}: file name {name!r} cannot be stored")
        files[name] = FileEntry(path.stat().st_size, sha256_of(path))
    if not files:
        raise ArtifactError(key, f"{src} holds no files")
    return Manifest(key, files, datetime.now(timezone.utc).isoformat())
