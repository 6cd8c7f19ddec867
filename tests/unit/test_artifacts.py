"""The artifact store (service/core/artifacts.py) on a local fsspec URL and on real S3 HTTP
(moto's server, tests/support/s3.py): round trip, manifest last, verify on fetch, write-once
keys, the fetch cache; and the data-dir mode that keeps today's paths."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pytest
from pydantic import ValidationError

from service.core.artifacts import (
    MANIFEST_FILE,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    ArtifactStore,
    bundle_key,
)
from service.core.config import Settings
from service.serving.index_store import IndexStore
from tests.support.s3 import S3Server

KEY = "bundles/student-a-0123abcd"


def make_src(root: Path, *, seed: int = 0) -> Path:
    """A small artifact directory: a binary file, a text file, a nested file."""
    src = root / f"src-{seed}"
    (src / "sub").mkdir(parents=True)
    (src / "items.faiss").write_bytes(bytes((i * 7 + seed) % 256 for i in range(70_000)))
    (src / "meta.json").write_text(f'{{"model_id": "student-a", "seed": {seed}}}')
    (src / "sub" / "groups.npy").write_bytes(b"\x93NUMPY" + bytes([seed]) * 100)
    return src


def same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL: a local directory through fsspec's file filesystem, or a fresh S3 bucket."""
    if request.param == "file":
        return f"file://{tmp_path / 'shared-store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    request.getfixturevalue("s3_env")  # this process reaches it through the AWS variables only
    return f"s3://{server.make_bucket()}/artifacts"


@pytest.fixture()
def new_store(store_url: str, tmp_path: Path) -> Callable[[str], ArtifactStore]:
    """new_store(host): the store as one host sees it, with that host's own data dir and cache."""
    return lambda host: ArtifactStore(store_url, tmp_path / host)


# -- a store URL (file://, s3://) ---------------------------------------------------------------


def test_put_then_fetch_round_trip(new_store, tmp_path: Path) -> None:
    writer, reader = new_store("worker"), new_store("api")
    src = make_src(tmp_path)
    assert not reader.exists(KEY)
    writer.put(KEY, src)
    assert reader.exists(KEY)
    got = reader.fetch(KEY)
    assert got == tmp_path / "api" / "cache" / "artifacts" / KEY  # in the reader's own cache
    assert same_files(src, got) and (got / MANIFEST_FILE).is_file()
    manifest = reader.manifest(KEY)
    assert set(manifest.files) == {"items.faiss", "meta.json", "sub/groups.npy"}
    assert manifest.files["items.faiss"].size == 70_000
    assert not list((reader.cache_dir / ".tmp").iterdir())  # no temp directory left behind


def test_a_key_without_its_manifest_is_absent(new_store, tmp_path: Path, monkeypatch) -> None:
    """A writer that dies after the files but before the manifest leaves nothing visible;
    its retry completes the key."""
    writer, reader = new_store("worker"), new_store("api")
    src = make_src(tmp_path)
    fs = writer._remote()[0]

    def dies(path: str, value: bytes, **kwargs: object) -> None:
        raise OSError("writer died before the manifest")

    monkeypatch.setattr(fs, "pipe_file", dies)
    with pytest.raises(OSError, match="writer died"):
        writer.put(KEY, src)
    monkeypatch.undo()
    assert fs.exists(writer._path(KEY, "items.faiss"))  # the files are there ...
    assert not reader.exists(KEY)  # ... but without the manifest the key is absent
    with pytest.raises(ArtifactNotFoundError, match=f"artifact {KEY}: .*no {MANIFEST_FILE}"):
        reader.fetch(KEY)
    assert not (reader.cache_dir / KEY).exists()
    writer.put(KEY, src)  # the retry uploads over the leftovers, then the manifest
    assert same_files(src, reader.fetch(KEY))


def test_a_jobs_scratch_is_listed_fetched_into_place_and_deleted(
    new_store, tmp_path: Path, monkeypatch
) -> None:
    """Scratch keys (a fanned-out job's shards): complete ones listed in one call, fetched
    into a directory of the job's (not the cache), deleted with the job; artifacts never are."""
    writer, parent = new_store("worker"), new_store("parent")
    done = [f"scratch/job1/shard-{i:05d}" for i in (0, 2)]
    for seed, key in enumerate(done):
        writer.put(key, make_src(tmp_path, seed=seed))
    fs = writer._remote()[0]
    monkeypatch.setattr(fs, "pipe_file", lambda *a, **k: (_ for _ in ()).throw(OSError("died")))
    with pytest.raises(OSError):
        writer.put("scratch/job1/shard-00001", make_src(tmp_path, seed=5))  # no manifest: not done
    monkeypatch.undo()
    writer.put("scratch/job2/shard-00000", make_src(tmp_path, seed=6))
    assert parent.complete_keys("scratch/job1") == set(done)
    assert parent.complete_keys("scratch/job9") == set()

    dest = tmp_path / "parent" / "shards" / "shard-00002"
    assert parent.fetch_into(done[1], dest) == dest and same_files(
        make_src(tmp_path / "x", seed=1), dest
    )
    assert not (parent.cache_dir / done[1]).exists() and [
        p.name for p in dest.parent.iterdir()
    ] == [dest.name]

    parent.delete_scratch("scratch/job1")
    assert parent.complete_keys("scratch/job1") == set() and not fs.exists(
        writer._path("scratch/job1")
    )
    assert parent.complete_keys("scratch/job2") == {
        "scratch/job2/shard-00000"
    }  # another job's stays
    with pytest.raises(ArtifactError, match="only keys under scratch/ are ever deleted"):
        parent.delete_scratch("bundles")


def test_a_key_listed_half_written_is_read_whole_once_complete(
    new_store, tmp_path: Path, monkeypatch
) -> None:
    """A reader that listed a key while its files were uploaded but not its manifest sees the
    manifest once it is written: no listing cached by the filesystem hides it (s3fs caches
    directory listings by default, and reads a file's size from them)."""
    writer, reader = new_store("worker"), new_store("parent")
    key, src = "scratch/job1/shard-00000", make_src(tmp_path)
    fs, root = writer._remote()
    # Another host: its own filesystem object (fsspec shares one per process and options,
    # and a write through it would refresh the reader's listings).
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    reader._fs = (fsspec.filesystem(protocol, skip_instance_cache=True, **fs.storage_options), root)
    with monkeypatch.context() as m, pytest.raises(OSError):
        m.setattr(fs, "pipe_file", lambda *a, **k: (_ for _ in ()).throw(OSError("not yet")))
        writer.put(key, src)  # the files are there, the manifest is not
    assert reader.complete_keys("scratch/job1") == set() and not reader.exists(key)
    reader._remote()[0].ls(reader._path(key))  # a listing of the key's directory, files only
    writer.put(key, src)
    assert reader.complete_keys("scratch/job1") == {key}
    assert same_files(src, reader.fetch_into(key, tmp_path / "parent" / "shard-00000"))


@pytest.mark.parametrize("damage", ["same size", "truncated", "deleted"])
def test_a_corrupt_file_in_the_store_is_refused(new_store, tmp_path: Path, damage: str) -> None:
    writer, reader = new_store("worker"), new_store("api")
    writer.put(KEY, make_src(tmp_path))
    fs, path = writer._remote()[0], writer._path(KEY, "items.faiss")
    if damage == "same size":
        fs.pipe_file(path, b"\x00" * 70_000)  # bit rot, or someone edited it in the bucket
    elif damage == "truncated":
        fs.pipe_file(path, b"\x00" * 100)
    else:
        fs.rm_file(path)
    reason = {
        "same size": "sha256 .* does not match the manifest",
        "truncated": "100 bytes, the manifest says 70000",
        "deleted": "listed in the manifest, missing from",
    }[damage]
    with pytest.raises(ArtifactCorruptError, match=f"artifact {KEY}: items.faiss: {reason}"):
        reader.fetch(KEY)
    assert not (reader.cache_dir / KEY).exists()  # nothing unverified is handed on or cached
    assert not list((reader.cache_dir / ".tmp").iterdir())


def test_keys_are_written_once(new_store, tmp_path: Path) -> None:
    store = new_store("worker")
    first = make_src(tmp_path, seed=1)
    store.put(KEY, first)
    written = store.manifest(KEY)
    store.put(KEY, make_src(tmp_path / "again", seed=1))  # same content (a redelivered job): no-op
    assert store.manifest(KEY) == written
    with pytest.raises(
        ArtifactExistsError, match=f"artifact {KEY}: already written with different content"
    ):
        store.put(KEY, make_src(tmp_path, seed=2))
    assert store.manifest(KEY) == written
    assert same_files(first, new_store("api").fetch(KEY))  # the first content, untouched


def test_the_cache_is_reused_without_asking_the_store(
    new_store, tmp_path: Path, monkeypatch
) -> None:
    writer, reader = new_store("worker"), new_store("api")
    writer.put(KEY, make_src(tmp_path))
    first = reader.fetch(KEY)
    fs = reader._remote()[0]

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached key must not be fetched again")

    for name in ("cat_file", "get_file", "exists", "info"):
        monkeypatch.setattr(fs, name, no_network)
    assert reader.fetch(KEY) == first
    assert (
        ArtifactStore(writer.url, tmp_path / "api").fetch(KEY) == first
    )  # a restarted process too
    monkeypatch.undo()
    (first / "items.faiss").write_bytes(b"truncated")  # a damaged cached copy is fetched again
    again = reader.fetch(KEY)
    assert again == first and (again / "items.faiss").stat().st_size == 70_000


def test_the_cache_is_pruned_least_recently_used_first(tmp_path: Path) -> None:
    """prune_cache: oldest last use goes first, until the cache fits; kept keys and recent
    uses stay; a pruned key is fetched again whole; the data-dir mode never prunes."""
    writer = ArtifactStore(f"file://{tmp_path / 'shared-store'}", tmp_path / "writer")
    keys = [f"bundles/student-{n}-0123abcd" for n in "abcd"]
    for seed, key in enumerate(keys):
        writer.put(key, make_src(tmp_path, seed=seed))
    host = ArtifactStore(writer.url, tmp_path / "host")
    for age, key in zip(
        (4000, 3000, 2000, 1000), keys, strict=True
    ):  # a used longest ago ... d most recently
        marker = host.fetch(key) / MANIFEST_FILE
        os.utime(marker, (marker.stat().st_atime, marker.stat().st_mtime - age))
    size = host.cached()[0].size
    assert [c.key for c in host.cached()] == keys and all(c.size == size for c in host.cached())

    assert host.prune_cache(4 * size) == []  # it fits
    assert host.prune_cache(3 * size, keep={keys[0]}) == [keys[1]]  # a is served: b goes
    os.utime(host.cache_dir / keys[2] / MANIFEST_FILE)  # c used just now (a fetch touches it)
    host.fetch(keys[2])
    assert host.prune_cache(1, keep={keys[0]}) == [keys[3]]  # c is in its grace period
    assert host.prune_cache(1, grace_s=0) == [keys[0], keys[2]]
    assert host.cached() == [] and not list((host.cache_dir / ".tmp").glob("evicted-*"))
    assert same_files(make_src(tmp_path / "again", seed=1), host.fetch(keys[1]))  # fetched anew

    in_place = ArtifactStore("", tmp_path / "writer")
    assert in_place.prune_cache(1, grace_s=0) == [] and in_place.cached() == []


def test_an_api_process_never_prunes_the_bundles_it_serves(tmp_path: Path, monkeypatch) -> None:
    """IndexStore.prune_cache keeps the active bundle and every experiment arm's."""
    writer = ArtifactStore(f"file://{tmp_path / 'shared-store'}", tmp_path / "writer")
    keys = [f"bundles/student-{n}-0123abcd" for n in "abcd"]
    for seed, key in enumerate(keys):
        writer.put(key, make_src(tmp_path, seed=seed))
    settings = Settings(
        data_dir=tmp_path / "api", artifact_url=writer.url, artifact_cache_max_mb=0.001
    )
    store = IndexStore(settings)  # static: no watcher reads the state set below
    for key in keys:
        store.artifacts.fetch(key)
    arms = [SimpleNamespace(bundle_dir=writer.location(k)) for k in keys[1:3]]
    store._state = SimpleNamespace(
        pointer={"bundle_dir": writer.location(keys[0])},  # type: ignore[assignment]
        experiment=SimpleNamespace(spec=SimpleNamespace(arms=arms)),
    )
    monkeypatch.setattr("service.core.artifact_cache.CACHE_GRACE_S", 0.0)
    assert store.prune_cache() == [keys[3]]
    assert [c.key for c in store.artifacts.cached()] == keys[:3]


def test_resolve_locations(new_store, tmp_path: Path) -> None:
    store = new_store("api")
    store.put(KEY, make_src(tmp_path))
    location = store.location(KEY)
    assert location == f"{store.url}/{KEY}" and store.key_of(location) == KEY
    assert same_files(make_src(tmp_path / "x"), store.resolve(location))
    assert store.resolve("/srv/unkd/bundles/m-1") == Path(
        "/srv/unkd/bundles/m-1"
    )  # a path stays a path
    assert store.resolve("bundles/m-1") == tmp_path / "api" / "bundles" / "m-1"
    with pytest.raises(ArtifactError, match="not in this process's artifact store"):
        store.resolve(f"s3://another-bucket/{KEY}")
    with pytest.raises(ArtifactNotFoundError, match="artifact bundles/never-00000000"):
        store.resolve(store.location("bundles/never-00000000"))


def test_bad_keys_are_refused(new_store) -> None:
    store = new_store("api")
    for key in ("../etc", "/abs/key", "bundles//x", "bundles/../x", ""):
        with pytest.raises(ArtifactError, match="not a valid key"):
            store.location(key)


# -- the data-dir mode (UNKD_ARTIFACT_URL unset) --------------------------------------------------


def test_data_dir_mode_keeps_the_paths_of_today(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    store = ArtifactStore.from_settings(settings)
    assert store.in_place and settings.artifact_url == ""
    key = bundle_key("student-a", "0123abcd-ffff")
    built = settings.bundles_dir.resolve() / "student-a-0123abcd"  # where publish jobs build
    assert store.location(key) == str(built)
    os.makedirs(built)
    (built / "meta.json").write_text("{}")
    store.put(key, built)  # built in place: nothing copied, no manifest added
    assert sorted(p.name for p in built.iterdir()) == ["meta.json"]
    assert store.fetch(key) == settings.data_dir / key and store.resolve(str(built)) == built
    with pytest.raises(ArtifactExistsError):
        store.put(key, make_src(tmp_path))
    other = "bundles/student-b-89abcdef"
    store.put(other, make_src(tmp_path, seed=3))  # from elsewhere: copied in
    assert same_files(make_src(tmp_path / "y", seed=3), store.fetch(other))
    with pytest.raises(
        ArtifactNotFoundError, match="artifact bundles/none-00000000: .* does not exist"
    ):
        store.fetch("bundles/none-00000000")
    with pytest.raises(ArtifactError, match="UNKD_ARTIFACT_URL is unset"):
        store.resolve("s3://bucket/artifacts/bundles/student-a-0123abcd")


def test_artifact_url_setting() -> None:
    assert Settings(artifact_url="s3://unkd/artifacts/").artifact_url == "s3://unkd/artifacts"
    assert Settings(artifact_url=" ").artifact_url == ""
    for bad in ("unkd/artifacts", "s3://", "/srv/artifacts"):
        with pytest.raises(ValidationError) as info:
            Settings(artifact_url=bad)
        assert info.value.errors()[0]["loc"][0] == "artifact_url"
