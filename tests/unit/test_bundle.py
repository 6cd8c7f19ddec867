"""Serving bundle: build -> validate -> save -> load -> search, and its failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from bundle_fixtures import brute_force_topk, make_bundle, make_dataset, make_model_dir

import service.serving.bundle as bundle_mod
from service.core.bundle_format import BundleError, build_bundle
from service.serving.bundle import load_bundle

faiss.omp_set_num_threads(1)


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory):
    return make_bundle(tmp_path_factory.mktemp("flat"))


def test_round_trip_gives_identical_search_results(flat) -> None:
    path, ds, model = flat
    first, second = load_bundle(path), load_bundle(path)
    # both searched under the same process-wide faiss settings (IndexStore may change them)
    reference = faiss.IndexFlatIP(model.dim)
    reference.add(np.ascontiguousarray(model.item_emb))
    xq = np.ascontiguousarray(model.user_emb)
    d_ref, i_ref = reference.search(xq, 15)
    for b in (first, second):
        d, i = b.index.search(xq, 15)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_array_equal(d, d_ref)
    assert first.model_id == "m1" and first.n_users == ds.n_users and first.n_items == ds.n_items


def test_meta_describes_the_bundle(flat) -> None:
    path, ds, model = flat
    meta = json.loads((path / "meta.json").read_text())
    assert (
        meta["model_id"] == "m1" and meta["metric"] == "inner_product" and meta["factory"] == "Flat"
    )
    assert (meta["n_items"], meta["n_users"], meta["d"]) == (ds.n_items, ds.n_users, model.dim)
    expected = {
        "items.faiss",
        "user_emb.npy",
        "seen_indptr.npy",
        "seen_indices.npy",
        "user_ids.npy",
        "item_ids.npy",
        "groups.npy",
        "item_popularity.npy",
    }
    assert set(meta["files"]) == expected and meta["format_version"] == 2
    assert all(len(h) == 64 for h in meta["files"].values())
    b = load_bundle(path)
    np.testing.assert_array_equal(b.group_of(np.arange(ds.n_items)), ds.groups(4))
    assert b.item_external(7) == "i7" and b.user_index("u3") == 3 and b.user_index("nobody") is None


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_agrees_with_brute_force(flat, exclude_seen: bool) -> None:
    path, ds, model = flat
    b = load_bundle(path)
    users = np.arange(ds.n_users)
    k = 20
    seen = [b.seen(u) for u in users] if exclude_seen else None
    ref_s, ref_i = brute_force_topk(model.user_emb, model.item_emb, users, k, seen)
    scores, items = b.recommend(users, k, exclude_seen)
    assert scores.shape == items.shape == (ds.n_users, k)
    np.testing.assert_array_equal(items, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)


def test_exclude_seen_removes_exactly_the_training_items(flat) -> None:
    path, ds, _ = flat
    b = load_bundle(path)
    train = ds.csr("train")
    users = np.arange(ds.n_users)
    with_seen_s, with_seen = b.recommend(users, 40, exclude_seen=False)
    _, without = b.recommend(users, 10, exclude_seen=True)
    for u in users:
        seen = set(train.indices[train.indptr[u] : train.indptr[u + 1]].tolist())
        assert len(without[u]) == 10 and (without[u] >= 0).all()
        assert not seen & set(without[u].tolist())
        # the unfiltered ranking minus training items, cut to 10, is the filtered ranking
        expected = [i for i in with_seen[u].tolist() if i not in seen][:10]
        assert without[u].tolist() == expected


def test_user_who_saw_almost_everything_gets_what_is_left(tmp_path: Path) -> None:
    path, ds, model = make_bundle(tmp_path, n_users=10, n_items=120, heavy_users=2)
    b = load_bundle(path)
    scores, items = b.recommend(np.array([0, 1, 5]), 10, exclude_seen=True)
    for row, u in enumerate((0, 1)):
        unseen = sorted(set(range(ds.n_items)) - set(b.seen(u).tolist()))
        assert sorted(items[row][items[row] >= 0].tolist()) == unseen  # the 3 left
        assert (items[row][3:] == -1).all() and np.isneginf(scores[row][3:]).all()
    assert (items[2] >= 0).all()


def test_heavy_history_uses_exact_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, ds, model = make_bundle(tmp_path, n_users=30, n_items=200, max_seen=40)
    monkeypatch.setattr(bundle_mod, "SEEN_SEARCH_BUDGET", 10)  # most users now count as heavy
    b = load_bundle(path)
    users = np.arange(ds.n_users)
    ref_s, ref_i = brute_force_topk(
        model.user_emb, model.item_emb, users, 12, [b.seen(u) for u in users]
    )
    scores, items = b.recommend(users, 12, exclude_seen=True)
    np.testing.assert_array_equal(items, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW32"])
def test_approximate_indexes_build_and_pass_validation(tmp_path: Path, factory: str) -> None:
    path, ds, model = make_bundle(tmp_path, factory=factory, n_users=50, n_items=1000, nprobe=16)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["factory"] == factory and meta["validation_recall"] >= 0.9 and not meta["exact"]
    assert "item_emb.npy" in meta["files"]
    b = load_bundle(path, nprobe=16, ef_search=128)
    scores, items = b.recommend(np.arange(ds.n_users), 10, exclude_seen=True)
    assert (items >= 0).all()
    for u in range(ds.n_users):
        assert not set(b.seen(u).tolist()) & set(items[u].tolist())
        assert (np.diff(scores[u]) <= 1e-6).all()


def test_approximate_index_below_recall_threshold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="recall@10"):
        make_bundle(tmp_path, factory="IVF64,Flat", n_items=3000, nprobe=1, min_recall=0.99)
    assert not (tmp_path / "bundles" / "m1").exists()  # nothing half-written


def test_short_approximate_rows_are_filled_exactly(tmp_path: Path) -> None:
    path, ds, model = make_bundle(tmp_path, factory="IVF64,Flat", n_items=3000, nprobe=64)
    b = load_bundle(path, nprobe=1)  # one list holds ~47 items: k=100 cannot come from it
    users = np.arange(ds.n_users)
    scores, items = b.recommend(users, 100, exclude_seen=True)
    ref_s, ref_i = brute_force_topk(
        model.user_emb, model.item_emb, users, 100, [b.seen(u) for u in users]
    )
    np.testing.assert_array_equal(items, ref_i)


def test_invalid_factory_and_shape_mismatch_raise(tmp_path: Path) -> None:
    ds = make_dataset()
    model_dir = make_model_dir(tmp_path, ds)
    with pytest.raises(BundleError, match="factory"):
        build_bundle(model_dir, ds, tmp_path / "b", model_id="x", index_factory="NoSuchIndex")
    other = make_dataset(n_users=7)
    with pytest.raises(ValueError, match="trained on dataset"):
        build_bundle(model_dir, other, tmp_path / "b", model_id="x")


@pytest.mark.parametrize("victim", ["items.faiss", "user_emb.npy", "seen_indices.npy"])
def test_tampered_or_missing_file_raises(tmp_path: Path, victim: str) -> None:
    path, _, _ = make_bundle(tmp_path)
    with open(path / victim, "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match=f"{victim}: checksum mismatch"):
        load_bundle(path)
    (path / victim).unlink()
    with pytest.raises(BundleError, match=f"{victim}: missing"):
        load_bundle(path)


def test_missing_or_corrupt_meta_raises(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a serving bundle"):
        load_bundle(tmp_path / "nowhere")
    path, _, _ = make_bundle(tmp_path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable bundle meta"):
        load_bundle(path)


def test_items_json_is_valid_and_drops_padding(flat) -> None:
    path, ds, _ = flat
    b = load_bundle(path)
    scores, items = b.recommend(np.array([4]), 5, exclude_seen=True)
    scores[0, 4], items[0, 4] = -np.inf, -1  # a padded slot
    parsed = json.loads(b.items_json(scores[0], items[0]))
    assert [p["item_id"] for p in parsed] == [f"i{i}" for i in items[0, :4]]
    assert [p["score"] for p in parsed] == [float(s) for s in scores[0, :4]]
    assert [p["group"] for p in parsed] == [int(g) for g in b.group_of(items[0, :4])]
