"""Serving a student whose embeddings carry a head-shift column (training.calibration).

The student is built here by hand: learned vectors p_u, q_i (gaussian), per-user shifts
beta_u >= 0 and the head group of the dataset, stored as [p_u, beta_u] and [q_i, -head_i]
with a manifest whose head_share_cap names the column. Every expected list is computed here
in float64 from those parts (p, q, beta, head, the dataset), never from the bundle:

- plain lists rank by [p_u, beta_u] . [q_i, -head_i], seen items removed;
- a folded-in history is the ridge solution on the learned columns q only (lambda in their
  units), with the new-user shift appended;
- similar items are the cosine over the learned columns only;
- a model without the column (the same p, q) is served as before.

Each check also shows that the column matters for it on this data (the list that treats the
column as a learned coordinate differs), so a bundle ignoring the column cannot pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest
from bundle_fixtures import make_dataset

from service.core.bundle_format import BundleError, build_bundle, read_bundle
from service.serving.bundle import ServingBundle, load_bundle
from service.serving.filters import RowQuery
from service.serving.foldin import FOLD_IN_LAMBDA
from training.checkpoint import ModelArtifact
from training.dataset import Dataset
from training.manifest import DatasetInfo, HeadShareCap, ModelManifest, TrainingSummary

faiss.omp_set_num_threads(1)
K = 15
DIM = 8  # learned columns; the shift column is column DIM
N_USERS, N_ITEMS = 40, 300


@dataclass
class Student:
    ds: Dataset
    p: np.ndarray  # (n_users, DIM) float64 learned user vectors
    q: np.ndarray  # (n_items, DIM) float64 learned item vectors
    beta: np.ndarray  # (n_users,) float64 shifts
    head: np.ndarray  # (n_items,) float64, 1.0 in the head group
    new_user: float

    def histories(self) -> list[np.ndarray]:
        """Head items only, head and tail mixed, tail items only."""
        head, tail = np.flatnonzero(self.head), np.flatnonzero(self.head == 0)
        return [head[:5], np.concatenate([head[-3:], tail[[0, 100]]]), tail[[5, 50, 200]]]

    def probe_items(self) -> list[int]:
        """Two head items and three others, for similar items."""
        head, tail = np.flatnonzero(self.head), np.flatnonzero(self.head == 0)
        return [int(head[0]), int(head[-1]), int(tail[0]), int(tail[100]), int(tail[-1])]

    def seen(self, u: int) -> np.ndarray:
        train = self.ds.csr("train")
        return train.indices[train.indptr[u] : train.indptr[u + 1]]


def top(scores: np.ndarray, k: int, banned: np.ndarray | list[int] = ()) -> list[int]:
    """Brute-force top-k: equal scores, lower index first; banned items never."""
    s = np.array(scores, dtype=np.float64)
    s[np.asarray(banned, dtype=np.int64)] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    return [int(i) for i in order[np.isfinite(s[order])][:k]]


def ridge(q: np.ndarray, history: np.ndarray) -> np.ndarray:
    """The fold-in's ridge regression of ones on the history rows of q, solved as a stacked
    least-squares problem; lambda = FOLD_IN_LAMBDA x the mean squared row norm of q."""
    hs = q[np.unique(history)]
    lam = FOLD_IN_LAMBDA * float(np.mean(np.sum(q * q, axis=1)))
    a = np.vstack([hs, np.sqrt(lam) * np.eye(q.shape[1])])
    y = np.concatenate([np.ones(len(hs)), np.zeros(q.shape[1])])
    return np.linalg.lstsq(a, y, rcond=None)[0]


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def student() -> Student:
    ds = make_dataset(n_users=N_USERS, n_items=N_ITEMS, max_seen=25, seed=4)
    rng = np.random.default_rng(7)
    p = rng.standard_normal((N_USERS, DIM))
    q = rng.standard_normal((N_ITEMS, DIM)) * 0.5
    beta = np.where(rng.random(N_USERS) < 0.25, 0.0, rng.uniform(0.5, 3.0, N_USERS))
    beta = beta.astype(np.float32).astype(np.float64)  # stored as float32: compare the same
    head = (ds.groups(4) == 0).astype(np.float64)
    assert 0 < head.sum() < N_ITEMS / 2  # a head group to shift, and items outside it
    return Student(ds, p, q, beta, head, float(beta.mean()))


def save_model(root: Path, s: Student, *, column: bool, shift_column: int | None = None) -> Path:
    """The student's model directory: with the column ([p, beta], [q, -head]) and a manifest
    naming it (shift_column, default DIM), or the learned vectors only and no cap."""
    user_emb, item_emb = s.p, s.q
    training = None
    if column:
        user_emb = np.hstack([s.p, s.beta[:, None]])
        item_emb = np.hstack([s.q, -s.head[:, None]])
        cap = HeadShareCap(
            teacher=0.5,
            student=0.5,
            met=True,
            rule="shift",
            users_shifted=float((s.beta > 0).mean()),
            shift_column=DIM if shift_column is None else shift_column,
            new_user_shift=s.new_user,
        )
        training = TrainingSummary(
            best_epoch=0, epochs_run=1, seconds=0.0, seconds_per_epoch=0.0, head_share_cap=cap
        )
    artifact = ModelArtifact(
        user_emb=user_emb.astype(np.float32),
        item_emb=item_emb.astype(np.float32),
        manifest=ModelManifest(
            kind="student",
            model="mf",
            dim=DIM,
            dataset=DatasetInfo(fingerprint=s.ds.fingerprint),
            training=training,
        ),
    )
    return artifact.save(root / ("shifted" if column else "plain"))


@pytest.fixture(scope="module", params=["Flat", "IVF8,Flat"])
def bundles(
    request: pytest.FixtureRequest, student: Student, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Bundles of the shifted student and of its learned part alone (no column); an IVF index
    probed in full keeps its item vectors in item_emb.npy, the exact one in the index."""
    root = tmp_path_factory.mktemp("shift")
    out = {}
    for name, column in (("shifted", True), ("plain", False)):
        model_dir = save_model(root, student, column=column)
        out[name] = root / "bundles" / name
        build_bundle(
            model_dir, student.ds, out[name], model_id=name, index_factory=request.param, nprobe=8
        )
    return out


def load(path: Path) -> ServingBundle:
    return load_bundle(path, nprobe=8)


def test_meta_names_the_column_only_when_the_model_has_one(bundles, student: Student) -> None:
    shifted = json.loads((bundles["shifted"] / "meta.json").read_text())
    assert shifted["d"] == DIM + 1 and shifted["shift_column"] == DIM
    assert shifted["new_user_shift"] == pytest.approx(student.new_user)
    plain = json.loads((bundles["plain"] / "meta.json").read_text())
    assert plain["d"] == DIM and "shift_column" not in plain and "new_user_shift" not in plain
    assert read_bundle(bundles["shifted"]).meta["shift_column"] == DIM  # validation passes


def test_plain_lists_rank_by_the_shifted_score(bundles, student: Student) -> None:
    b = load(bundles["shifted"])
    full = (
        np.hstack([student.p, student.beta[:, None]])
        @ np.hstack([student.q, -student.head[:, None]]).T
    )  # (n_users, n_items)
    unshifted = student.p @ student.q.T
    users = np.arange(N_USERS)
    _, rows = b.recommend(users, K, exclude_seen=True)
    _, kept = b.recommend(users, K, exclude_seen=False)
    moved = 0
    for u in users.tolist():
        expected = top(full[u], K, student.seen(u))
        assert rows[u].tolist() == expected, u
        assert kept[u].tolist() == top(full[u], K), u
        moved += expected != top(unshifted[u], K, student.seen(u))
    assert moved >= N_USERS // 4  # the shifts change many lists: this test can tell
    # a single request goes through the coalescer, the GET route's path
    _, one = b.recommend_one(3, K, True)
    assert one.tolist() == top(full[3], K, student.seen(3))


def test_fold_in_regresses_on_the_learned_columns_and_appends_the_new_user_shift(
    bundles, student: Student
) -> None:
    b = load(bundles["shifted"])
    items = np.hstack([student.q, -student.head[:, None]])  # the served item vectors
    naive_differs = 0
    for history in student.histories():
        u = np.append(ridge(student.q, history), student.new_user)
        np.testing.assert_allclose(b.fold_in(history), u, rtol=1e-4, atol=1e-6)
        _, rows = b.recommend(np.array([-1]), K, False, [RowQuery(history, None, history)])
        expected = top(items @ u, K, history)
        assert rows[0].tolist() == expected, history
        # the column taken for a learned coordinate: regressed on, lambda in all columns' units
        naive_differs += top(items @ ridge(items, history), K, history) != expected
    assert naive_differs >= 1  # on this data the column matters to by-history


def test_similar_items_are_the_cosine_over_the_learned_columns(bundles, student: Student) -> None:
    b = load(bundles["shifted"])
    unit = unit_rows(student.q)
    unit_all = unit_rows(np.hstack([student.q, -student.head[:, None]]))
    naive_differs = 0
    for item in student.probe_items():
        _, rows = b.recommend(
            np.array([-1]), K, False, [RowQuery(np.array([item]), None, None, item)]
        )
        expected = top(unit @ unit[item], K, [item])
        assert rows[0].tolist() == expected, item
        naive_differs += top(unit_all @ unit_all[item], K, [item]) != expected
    assert naive_differs >= 1


def test_a_model_without_the_column_is_served_as_before(bundles, student: Student) -> None:
    b = load(bundles["plain"])
    assert b.shift_column is None and b.new_user_shift == 0.0
    users = np.arange(N_USERS)
    _, rows = b.recommend(users, K, exclude_seen=True)
    scores = student.p @ student.q.T
    for u in users.tolist():
        assert rows[u].tolist() == top(scores[u], K, student.seen(u)), u
    for history in student.histories():  # every column regressed on, the vector of d columns
        u = ridge(student.q, history)
        np.testing.assert_allclose(b.fold_in(history), u, rtol=1e-4, atol=1e-6)
        _, rows = b.recommend(np.array([-1]), K, False, [RowQuery(history, None, history)])
        assert rows[0].tolist() == top(student.q @ u, K, history)
    unit = unit_rows(student.q)
    for item in student.probe_items():
        _, rows = b.recommend(
            np.array([-1]), K, False, [RowQuery(np.array([item]), None, None, item)]
        )
        assert rows[0].tolist() == top(unit @ unit[item], K, [item])


def test_a_manifest_that_misnames_the_column_is_refused(student: Student, tmp_path: Path) -> None:
    # column 0 holds learned values, not -1 / 0
    model_dir = save_model(tmp_path, student, column=True, shift_column=0)
    with pytest.raises(BundleError, match="item column 0 is not a head-shift column"):
        build_bundle(model_dir, student.ds, tmp_path / "b0", model_id="m")


def test_a_meta_whose_column_is_out_of_range_is_refused(bundles, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundles["shifted"], copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["shift_column"] = DIM + 1
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"shift_column=9 is outside the d=9 embedding columns"):
        read_bundle(copy)


def test_fold_in_and_cosine_table_leave_out_a_column_anywhere() -> None:
    """The pure functions take the column's index: here a middle one, not the last."""
    from service.serving.cosine import cosine_table
    from service.serving.foldin import fold_in, mean_sq_norm

    rng = np.random.default_rng(3)
    learned = rng.standard_normal((50, 4))
    shift = -(rng.random(50) < 0.3).astype(np.float64)
    emb = np.hstack([learned[:, :2], shift[:, None], learned[:, 2:]]).astype(np.float32)
    learned = learned.astype(np.float32).astype(np.float64)
    assert mean_sq_norm(emb, shift_column=2) == pytest.approx(np.mean(np.sum(learned**2, axis=1)))
    history = np.array([4, 9, 9, 31])
    hs = learned[np.unique(history)]
    lam = 2.5
    solution = np.linalg.solve(hs.T @ hs + lam * np.eye(4), hs.sum(axis=0))
    expected = np.array([solution[0], solution[1], 0.7, solution[2], solution[3]])
    np.testing.assert_allclose(fold_in(emb, history, lam, 2, 0.7), expected, rtol=1e-5, atol=1e-6)
    unit, index = cosine_table(emb, shift_column=2, chunk=16)  # chunks that do not divide 50
    np.testing.assert_allclose(unit, unit_rows(learned), rtol=1e-5, atol=1e-6)
    assert index.ntotal == 50 and index.d == 4


def test_a_distilled_students_bundle_serves_its_column_as_the_pipeline_wrote_it(
    tmp_path: Path,
) -> None:
    """training.pipelines.distill_student with cap_rule='shift' on synthetic data: the bundle
    takes the column the manifest names, and fold-in and similar items leave it out."""
    import torch

    from training.config import DistillConfig, TeacherConfig
    from training.pipelines import distill_student, train_teacher
    from training.synthetic import generate_synthetic

    cpu = torch.device("cpu")
    fast = {"epochs": 10, "batch_size": 512, "patience": 5, "eval_every": 1}
    data = generate_synthetic(
        n_users=400, n_items=200, dim=8, skew=1.0, interactions_per_user=25, seed=3
    )
    teacher = train_teacher(
        data, TeacherConfig(model="mf", dim=32, **fast), tmp_path / "t", device=cpu
    )
    cfg = DistillConfig(dim=DIM, head_share_cap="teacher", cap_rule="shift", **fast)
    art = distill_student(data, teacher, cfg, tmp_path / "s", device=cpu)
    cap = art.manifest.training.head_share_cap  # type: ignore[union-attr]
    assert cap is not None and cap.shift_column == DIM, cap  # some user was shifted here
    users, items = (x.astype(np.float64) for x in art.embeddings())
    assert users.shape[1] == items.shape[1] == DIM + 1
    meta = build_bundle(art.path, data, tmp_path / "b", model_id="s")
    assert meta["shift_column"] == DIM
    assert meta["new_user_shift"] == pytest.approx(users[:, DIM].mean(), rel=1e-5)
    b = load_bundle(tmp_path / "b")
    learned = items[:, :DIM]
    history = np.flatnonzero(items[:, DIM] == -1)[:4]  # head items
    u = np.append(ridge(learned, history), meta["new_user_shift"])
    np.testing.assert_allclose(b.fold_in(history), u, rtol=1e-4, atol=1e-6)
    unit = unit_rows(learned)
    _, rows = b.recommend(np.array([-1]), K, False, [RowQuery(np.array([0]), None, None, 0)])
    assert rows[0].tolist() == top(unit @ unit[0], K, [0])
