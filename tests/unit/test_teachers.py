"""Teachers behind one scoring contract (training.scoring): every teacher (mf, lightgcn, als,
ease) on a checkerboard with a known answer, ALS and EASE against hand-computed solutions,
every distiller from an ALS and an EASE teacher, EASE's size limit, EASE artifacts and the
refusal to publish them, and the scorer top-k path against the embedding one."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from service.core.bundle_format import BundleError, build_bundle
from training import budget
from training.budget import EASETooLargeError, check_distill, check_teacher
from training.checkpoint import EASE_FILE, EMBEDDINGS, ModelArtifact, NoEmbeddingsError
from training.config import DistillConfig, TeacherConfig
from training.dataset import Dataset
from training.errors import JobCancelled
from training.evaluation import evaluate_embeddings, evaluate_scorer
from training.manifest import ModelManifest
from training.pipelines import distill_student, evaluate_model, train_teacher
from training.scoring import EmbeddingScorer, ItemItemScorer, TeacherScorer
from training.teachers import load_scorer
from training.teachers.als import als_backend
from training.teachers.ease import ease_weights
from training.topk import topk_from_embeddings, topk_from_scorer
from training.trainer import validation_metrics
from training.validation import scorer_validation

CPU = torch.device("cpu")
DEVICES = ["cpu"] + [pytest.param("cuda", marks=pytest.mark.gpu)] * torch.cuda.is_available()
# Small, fast settings per teacher; each must still solve the checkerboard exactly.
CONFIGS = {
    "mf": {"dim": 8, "lr": 0.05, "epochs": 40, "patience": 40, "batch_size": 128},
    "lightgcn": {
        "dim": 8,
        "n_layers": 2,
        "lr": 0.05,
        "epochs": 40,
        "patience": 40,
        "batch_size": 128,
    },
    # rank 3 like implicit's own test: more factors could fit the withheld zeros themselves
    "als": {"dim": 3, "als": {"alpha": 10.0, "regularization": 0.1, "iterations": 15}},
    "ease": {"ease": {"l2": 10.0}},
}


def checkerboard(n: int = 40) -> Dataset:
    """implicit's known-answer data: even users like even items, odd users odd items; each
    user's own item u is withheld (valid for even users, test for odd), so every teacher
    must rank item u first among u's unseen items."""
    train = np.array([(u, i) for u in range(n) for i in range(u % 2, n, 2) if i != u])
    ids = [str(x) for x in range(n)]
    return Dataset(
        name="checkerboard",
        user_ids=ids,
        item_ids=ids,
        train=train,
        valid=np.array([(u, u) for u in range(0, n, 2)]),
        test=np.array([(u, u) for u in range(1, n, 2)]),
    )


@pytest.fixture(scope="module")
def board() -> Dataset:
    return checkerboard()


# -- the contract, over every teacher ------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["mf", "lightgcn", "als", "ease"])
def test_every_teacher_solves_the_checkerboard(
    board: Dataset, tmp_path, model: str, device: str
) -> None:
    dev = torch.device(device)
    cfg = TeacherConfig(model=model, **CONFIGS[model])  # type: ignore[arg-type]
    art = train_teacher(board, cfg, tmp_path / model, device=dev)
    scorer = load_scorer(ModelArtifact.load(tmp_path / model), board.csr("train"), dev)
    assert isinstance(scorer, TeacherScorer)
    assert (scorer.n_users, scorer.n_items) == (board.n_users, board.n_items)
    block = scorer.score(torch.tensor([0, 3, 5]))
    assert block.shape == (3, board.n_items) and block.dtype == torch.float32
    assert block.device.type == dev.type
    users = np.arange(board.n_users)
    top1 = topk_from_scorer(scorer, users, board.csr("train"), 1)[:, 0]
    assert (top1 == users).all(), f"{model}: p@1 = {(top1 == users).mean():.2f}, expected 1"
    assert art.manifest.model == model and art.report is not None
    assert art.report.metrics["hit@10"] == 1.0  # the test users' withheld item, ranked first


def test_ease_artifact_keeps_b_instead_of_embeddings(board: Dataset, tmp_path) -> None:
    art = train_teacher(
        board,
        TeacherConfig(model="ease", ease={"l2": 10.0}),
        tmp_path / "e",  # type: ignore[arg-type]
        device=CPU,
    )
    files = sorted(p.name for p in (tmp_path / "e").iterdir())
    assert files == [EASE_FILE, "manifest.json", "report.json"] and EMBEDDINGS not in files
    loaded = ModelArtifact.load(tmp_path / "e")
    m = loaded.manifest
    assert m.model == "ease" and m.dim == board.n_items and not m.has_embeddings
    assert m.weights is not None and m.weights.file == "ease.npz" and "B" in m.weights.arrays
    assert m.training is not None and m.training.backend == "torch" and len(m.training.history) == 1
    assert loaded.item_item is not None and loaded.item_item.shape == (board.n_items,) * 2
    np.testing.assert_array_equal(loaded.item_item, art.item_item)
    assert (np.diag(loaded.item_item) == 0).all()
    with pytest.raises(
        NoEmbeddingsError, match="EASE teachers have no embeddings to serve: distil a student"
    ):
        loaded.embeddings()
    assert evaluate_model(board, tmp_path / "e").metrics["ndcg@20"] == art.report.metrics["ndcg@20"]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="student is embeddings"):
        ModelManifest.model_validate({**m.model_dump(), "kind": "student", "method": "unkd"})


def test_publishing_an_ease_teacher_fails_with_a_clear_message(board: Dataset, tmp_path) -> None:
    train_teacher(board, TeacherConfig(model="ease"), tmp_path / "e", device=CPU)
    with pytest.raises(
        BundleError, match="EASE teachers have no embeddings to serve: distil a student"
    ):
        build_bundle(tmp_path / "e", board, tmp_path / "bundle", model_id="teacher-ease")
    assert not (tmp_path / "bundle").exists()


# -- EASE and ALS against hand-computed solutions ------------------------------------------
def test_ease_matches_numpy_closed_form() -> None:
    x = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float64)
    x[1, 2] = 0  # an asymmetric co-occurrence pattern: B is not symmetric
    lam = 0.5
    p = np.linalg.inv(x.T @ x + lam * np.eye(3))
    expected = np.eye(3) - p / np.diag(p)[None, :]  # I − P diag(1/diag P)
    b = ease_weights(sp.csr_matrix(x), lam, CPU).numpy()
    np.testing.assert_allclose(b, expected, atol=1e-5)
    assert (np.diag(b) == 0).all() and not np.allclose(b, b.T)
    scores = ItemItemScorer(sp.csr_matrix(x), b).score(torch.arange(4)).numpy()
    np.testing.assert_allclose(scores, x @ expected, atol=1e-5)


def test_als_factors_solve_implicits_weighted_least_squares(board: Dataset) -> None:
    """After the last half-step the item factors are the exact solution for the user
    factors (d = 3, so 3 conjugate-gradient steps are exact): confidence alpha on an
    interaction, 1 elsewhere, plus regularization·I — our options reach implicit as meant."""
    from training.teachers.als import fit_als

    alpha, reg = 5.0, 0.3
    cfg = TeacherConfig(
        model="als", dim=3, als={"alpha": alpha, "regularization": reg, "iterations": 4}
    )  # type: ignore[arg-type]
    train = board.csr("train")
    fitted = fit_als(train, board.csr("valid"), cfg, device=CPU)
    xu, yi = fitted.user_emb.astype(np.float64), fitted.item_emb.astype(np.float64)
    dense = train.toarray()
    for i in range(board.n_items):
        c = np.where(dense[:, i] > 0, alpha, 1.0)
        a = xu.T @ (c[:, None] * xu) + reg * np.eye(3)
        rhs = xu.T @ (c * (dense[:, i] > 0))
        np.testing.assert_allclose(yi[i], np.linalg.solve(a, rhs), rtol=2e-3, atol=2e-4)
    assert len(fitted.history) == 4 and fitted.backend == "implicit.cpu"


def test_als_reports_every_iteration_and_stops_when_asked(board: Dataset, tmp_path) -> None:
    events = []
    cfg = TeacherConfig(model="als", dim=4, als={"iterations": 5})  # type: ignore[arg-type]
    train_teacher(board, cfg, tmp_path / "a", device=CPU, on_progress=events.append)
    epochs = [e.epoch for e in events if e.stage == "train"]
    assert epochs[:5] == [1, 2, 3, 4, 5] and all(
        e.epochs == 5 for e in events if e.stage == "train"
    )
    assert "valid_ndcg@20" in [e for e in events if e.stage == "train"][-1].metrics
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    with pytest.raises(JobCancelled, match="ALS iteration 2"):
        train_teacher(board, cfg, tmp_path / "b", device=CPU, should_stop=stop_after_two)
    assert not (tmp_path / "b").exists()


def test_als_backend_is_chosen_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    import implicit.cpu.als
    import implicit.gpu

    assert als_backend(CPU) == (implicit.cpu.als.AlternatingLeastSquares, False)
    monkeypatch.setattr(implicit.gpu, "HAS_CUDA", False)
    assert als_backend(torch.device("cuda")) == (implicit.cpu.als.AlternatingLeastSquares, False)
    monkeypatch.setattr(implicit.gpu, "HAS_CUDA", True)
    cls, on_gpu = als_backend(torch.device("cuda"))
    assert on_gpu and cls.__module__ == "implicit.gpu.als"
    assert als_backend(CPU)[1] is False  # a CPU job never uses the CUDA build


# -- every distiller from ALS and EASE teachers ------------------------------------------
@pytest.fixture(scope="module")
def tiny_teachers(
    tiny_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ModelArtifact]:
    root = tmp_path_factory.mktemp("teachers")
    return {
        "als": train_teacher(
            tiny_dataset, TeacherConfig(model="als", dim=16), root / "als", device=CPU
        ),
        "ease": train_teacher(tiny_dataset, TeacherConfig(model="ease"), root / "ease", device=CPU),
    }


@pytest.mark.parametrize("teacher", ["als", "ease"])
@pytest.mark.parametrize("method", ["none", "rd", "cd", "rrd", "unkd"])
def test_every_distiller_runs_from_als_and_ease(
    tiny_dataset, tiny_teachers, tmp_path, teacher, method
) -> None:
    t = tiny_teachers[teacher]
    cfg = DistillConfig(
        method=method,
        dim=4,
        epochs=2,
        batch_size=1024,
        unkd={"top_l": 30},
        cd={"top_l": 50},
        rrd={"top_l": 30},
    )  # type: ignore[arg-type]
    art = distill_student(tiny_dataset, t, cfg, tmp_path / "s", device=CPU)
    cap = art.manifest.training.head_share_cap  # UnKD: maybe one more column, the head shifts
    extra = 1 if cap is not None and cap.shift_column is not None else 0
    assert art.user_emb is not None and art.user_emb.shape == (tiny_dataset.n_users, 4 + extra)
    m = art.manifest
    assert (
        m.kind == "student"
        and m.model == "mf"
        and m.teacher is not None
        and m.teacher.model == teacher
    )
    assert art.report is not None and art.report.teacher is not None
    assert "overlap@20" in art.report.metrics
    assert art.report.teacher.metrics["ndcg@20"] == t.report.metrics["ndcg@20"]  # type: ignore[union-attr]


def test_cd_labels_are_the_teachers_scores_of_the_listed_items(tiny_dataset, tiny_teachers) -> None:
    from training.distill import build_distiller

    train = tiny_dataset.csr("train")
    scorer = load_scorer(tiny_teachers["ease"], train, CPU)
    cfg = DistillConfig(method="cd", cd={"top_l": 20, "samples": 5, "temperature": 2.0})  # type: ignore[arg-type]
    d = build_distiller(cfg, scorer, train, CPU)
    assert d is not None
    d.prepare()
    batch = d.sample_epoch(1, torch.Generator().manual_seed(0))
    full = scorer.score(torch.arange(tiny_dataset.n_users))
    expected = torch.sigmoid(full[batch["u"], batch["i"]] / 2.0)
    torch.testing.assert_close(batch["y"], expected, rtol=1e-5, atol=1e-6)


# -- EASE's size limit, before any work ---------------------------------------------------
def test_ease_over_the_limit_is_refused_before_any_work(
    tiny_dataset, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(budget, "EASE_MAX_ITEMS", tiny_dataset.n_items - 1)

    def heavy(*args: object, **kwargs: object) -> None:
        raise AssertionError("the EASE solve started")

    monkeypatch.setattr("training.teachers.ease.ease_weights", heavy)
    with pytest.raises(EASETooLargeError, match="use model='als'") as err:
        train_teacher(tiny_dataset, TeacherConfig(model="ease"), tmp_path / "e", device=CPU)
    assert err.value.field == "model" and f"{tiny_dataset.n_items - 1:,} items" in str(err.value)
    assert not (tmp_path / "e").exists()


def test_budget_knows_the_teachers() -> None:
    limit = 2**50
    with pytest.raises(
        EASETooLargeError, match=f"limit of {budget.EASE_MAX_ITEMS:,} items.*model='als'"
    ):
        check_teacher(1000, budget.EASE_MAX_ITEMS + 1, TeacherConfig(model="ease"), limit)
    ease = check_teacher(1000, 10_000, TeacherConfig(model="ease"), limit)
    assert ease >= 2 * 10_000**2 * 4  # the solve holds XᵀX + λI and its factor
    with pytest.raises(budget.MemoryBudgetError, match="model: .* use model='als'"):
        check_teacher(1000, 10_000, TeacherConfig(model="ease"), 2**20)
    assert check_teacher(1000, 10_000, TeacherConfig(model="als", dim=100), limit) < ease
    cfg = DistillConfig(method="unkd")
    from_ease = check_distill(1000, 10_000, cfg, 10_000, limit, teacher_model="ease")
    from_mf = check_distill(1000, 10_000, cfg, 100, limit, teacher_model="mf")
    assert from_ease - from_mf == pytest.approx(10_000**2 * 4 - 11_000 * 100 * 4)


# -- one top-k path for embeddings and any scorer ----------------------------------------
class _NumpyScorer:
    """A teacher that is not embeddings: scores computed outside torch, as any model may."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores.astype(np.float32)
        self.n_users, self.n_items = scores.shape
        self.device = CPU

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.scores[users.numpy()].copy())


def test_scorer_topk_equals_embedding_topk_with_ties() -> None:
    rng = np.random.default_rng(3)
    ue = rng.integers(-1, 2, (60, 2)).astype(np.float32)  # integer scores: many exact ties
    ie = rng.integers(-1, 2, (45, 2)).astype(np.float32)
    excl = sp.random(60, 45, density=0.2, format="csr", random_state=0)
    users = np.arange(60)
    by_emb = topk_from_embeddings(ue, ie, users, excl, 12, chunk=7)
    by_scorer = topk_from_scorer(_NumpyScorer(ue @ ie.T), users, excl, 12, chunk=13)
    np.testing.assert_array_equal(by_scorer, by_emb)
    # the rule itself: score descending, then item index ascending, excluded items never
    s = ue @ ie.T
    s[excl.nonzero()] = -np.inf
    ref = np.array([sorted(range(45), key=lambda i, u=u: (-s[u, i], i))[:12] for u in users])
    np.testing.assert_array_equal(by_emb, ref)


def test_mf_teacher_report_is_the_same_through_the_scorer(board: Dataset) -> None:
    rng = np.random.default_rng(0)
    ue = rng.normal(size=(board.n_users, 4)).astype(np.float32)
    ie = rng.normal(size=(board.n_items, 4)).astype(np.float32)
    a = evaluate_embeddings(board, ue, ie, reference=(ie[: board.n_users], ue[: board.n_items]))
    b = evaluate_scorer(board, _NumpyScorer(ue @ ie.T), reference=EmbeddingScorer(ie, ue))
    assert a["metrics"] == b["metrics"] and a["groups"] == b["groups"]


def test_scorer_validation_matches_the_trainers(tiny_dataset: Dataset) -> None:
    rng = np.random.default_rng(1)
    ue = torch.from_numpy(rng.normal(size=(tiny_dataset.n_users, 6)).astype(np.float32))
    ie = torch.from_numpy(rng.normal(size=(tiny_dataset.n_items, 6)).astype(np.float32))
    train, valid = tiny_dataset.csr("train"), tiny_dataset.csr("valid")
    assert scorer_validation(EmbeddingScorer(ue, ie), train, valid) == validation_metrics(
        ue, ie, train, valid
    )


def test_cli_trains_als_and_ease_teachers(tiny_dataset: Dataset, tmp_path, capsys) -> None:
    from service.cli import main

    tiny_dataset.save(tmp_path / "ds")
    assert (
        main(
            [
                "train-teacher",
                str(tmp_path / "ds"),
                "--model",
                "als",
                "--dim",
                "8",
                "--als-alpha",
                "5",
                "--als-iterations",
                "3",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    m = ModelArtifact.load(tmp_path / "a").manifest
    assert m.model == "als" and m.dim == 8 and m.config is not None
    assert m.config.als.alpha == 5.0 and m.config.als.iterations == 3  # type: ignore[union-attr]
    assert (
        main(
            [
                "train-teacher",
                str(tmp_path / "ds"),
                "--model",
                "ease",
                "--ease-l2",
                "50",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    assert (tmp_path / "e" / EASE_FILE).is_file()
    capsys.readouterr()
