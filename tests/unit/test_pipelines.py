"""Teacher and student pipelines end to end on tiny synthetic data: quality, artifacts,
lineage, cancellation, and the bad inputs each refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import ModelArtifact
from training.config import DistillConfig, TeacherConfig
from training.dataset import Dataset
from training.errors import ConfigError, FingerprintMismatchError, JobCancelled
from training.evaluation import evaluate_topk, evaluated_users, most_popular_topk
from training.manifest import Lineage, TeacherInfo
from training.pipelines import distill_student, evaluate_model, train_teacher
from training.scoring import EmbeddingScorer
from training.synthetic import generate_synthetic

CPU = torch.device("cpu")
FAST = {"epochs": 25, "batch_size": 512, "patience": 5, "eval_every": 1}


@pytest.fixture(scope="module")
def data() -> Dataset:
    return generate_synthetic(
        n_users=400, n_items=200, dim=8, skew=1.0, interactions_per_user=25, seed=3
    )


@pytest.fixture(scope="module")
def teacher(data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    out = tmp_path_factory.mktemp("models") / "teacher"
    return train_teacher(data, TeacherConfig(model="mf", dim=32, **FAST), out, device=CPU)


def test_mf_teacher_beats_most_popular(data: Dataset, teacher: ModelArtifact) -> None:
    users = evaluated_users(data)
    pop = evaluate_topk(data, most_popular_topk(data, users, 50))
    assert teacher.report is not None
    ours = teacher.report.metrics
    assert ours["ndcg@20"] > 1.1 * pop["metrics"]["ndcg@20"], (
        ours["ndcg@20"],
        pop["metrics"]["ndcg@20"],
    )
    assert ours["recall@20"] > pop["metrics"]["recall@20"]


def test_teacher_artifact_is_self_describing(teacher: ModelArtifact) -> None:
    loaded = ModelArtifact.load(teacher.path)
    np.testing.assert_array_equal(loaded.item_emb, teacher.item_emb)
    m = loaded.manifest
    assert m == teacher.manifest and loaded.report == teacher.report
    assert m.kind == "teacher" and m.model == "mf" and m.dim == 32 and m.method is None
    assert isinstance(m.config, TeacherConfig) and m.config.dim == 32 and m.dataset.fingerprint
    assert m.lineage == Lineage(dataset_id=None, teacher_id=None) and m.teacher is None
    assert m.training is not None
    hist = m.training.history
    assert 1 <= m.training.best_epoch <= len(hist)
    best = max(h.figures["valid_ndcg@20"] or 0.0 for h in hist)
    assert hist[m.training.best_epoch - 1].figures["valid_ndcg@20"] == best, "best checkpoint kept"
    on_disk = json.loads((teacher.path / "manifest.json").read_text())
    assert (
        on_disk["lineage"] == {"dataset_id": None, "teacher_id": None} and "teacher" not in on_disk
    )
    assert "candidates_seconds" not in on_disk["training"]
    assert json.loads((teacher.path / "report.json").read_text())["metrics"]["ndcg@20"] > 0


@pytest.mark.parametrize("method", ["none", "rd", "cd", "rrd", "unkd"])
def test_each_method_distils_a_student_with_lineage(data, teacher, tmp_path, method) -> None:
    cfg = DistillConfig(method=method, dim=8, **FAST)
    art = distill_student(data, teacher.path, cfg, tmp_path / method, device=CPU, dataset_id="ds-1")
    # A UnKD student may carry one more column: its per-user head shifts (training.calibration).
    cap = art.manifest.training.head_share_cap
    extra = 1 if cap is not None and cap.shift_column is not None else 0
    assert art.user_emb.shape == (data.n_users, 8 + extra)
    assert (cap is not None) == (method == "unkd") and (cap is None or cap.met)
    m = art.manifest
    assert m.kind == "student" and m.method == method and isinstance(m.config, DistillConfig)
    assert m.lineage == Lineage(dataset_id="ds-1", teacher_id=teacher.manifest.id)
    assert m.teacher == TeacherInfo(model="mf", dim=32, path=str(teacher.path))
    assert m.training is not None and m.training.candidate_bytes is not None
    report, t_report = art.report, teacher.report
    assert report is not None and report.teacher is not None and t_report is not None
    assert report.teacher.metrics["ndcg@20"] == t_report.metrics["ndcg@20"]
    delta = (report.deltas or {})["ndcg@20"]
    assert delta == pytest.approx(
        (report.metrics["ndcg@20"] or 0) - (t_report.metrics["ndcg@20"] or 0)
    )
    assert "overlap@20" in report.metrics and report.retention is not None


def test_same_seed_same_model(data, teacher, tmp_path) -> None:
    """The seed fixes the initial embeddings too, whatever ran before in the process (a
    worker's earlier jobs): the global RNG is disturbed between the two runs."""
    cfg = TeacherConfig(model="mf", dim=8, epochs=3, batch_size=512)
    a = train_teacher(data, cfg, tmp_path / "a", device=CPU)
    torch.rand(17)
    b = train_teacher(data, cfg, tmp_path / "b", device=CPU)
    np.testing.assert_allclose(a.item_emb, b.item_emb, rtol=1e-5, atol=1e-6)
    student = DistillConfig(method="unkd", dim=4, epochs=2, batch_size=512, warm_start="none")
    c = distill_student(data, teacher, student, tmp_path / "c", device=CPU)
    torch.rand(5)
    d = distill_student(data, teacher, student, tmp_path / "d", device=CPU)
    np.testing.assert_allclose(c.user_emb, d.user_emb, rtol=1e-5, atol=1e-6)


def test_cancellation_leaves_no_model(data, tmp_path) -> None:
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(JobCancelled):
        train_teacher(
            data,
            TeacherConfig(model="mf", dim=8, **FAST),
            tmp_path / "t",
            device=CPU,
            should_stop=stop_after_two,
        )
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir()] == [], "no half-written temporary directory left"


def test_progress_events_report_epochs(data, tmp_path) -> None:
    events = []
    train_teacher(
        data,
        TeacherConfig(model="mf", dim=8, epochs=3, batch_size=512, eval_every=1),
        tmp_path / "t",
        device=CPU,
        on_progress=events.append,
    )
    train = [e for e in events if e.stage == "train"]
    assert [e.epoch for e in train] == [1, 2, 3] and all(e.epochs == 3 for e in train)
    assert all(e.loss is not None and "valid_ndcg@20" in e.metrics for e in train)
    assert train[-1].elapsed_s >= train[0].elapsed_s


def test_student_on_another_dataset_is_refused(teacher, tmp_path) -> None:
    other = generate_synthetic(
        n_users=400, n_items=200, dim=8, skew=1.0, interactions_per_user=25, seed=4
    )
    with pytest.raises(FingerprintMismatchError, match="trained on dataset"):
        distill_student(
            other, teacher.path, DistillConfig(dim=8, epochs=1), tmp_path / "s", device=CPU
        )
    with pytest.raises(FingerprintMismatchError):
        evaluate_model(other, teacher.path)


def test_bad_dimension_and_method_are_refused(data, teacher, tmp_path) -> None:
    with pytest.raises(ValueError, match="dim"):
        TeacherConfig(model="mf", dim=0)
    with pytest.raises(ValueError, match="method"):
        DistillConfig(method="distill-harder")
    with pytest.raises(ConfigError, match="dim=0"):
        from training.models import build_model

        build_model("mf", 3, 3, 0, data.csr("train"), device=CPU)
    assert not (tmp_path / "s").exists()


def test_evaluate_model_matches_the_saved_report(data, teacher) -> None:
    report = evaluate_model(data, teacher.path)
    assert teacher.report is not None
    assert report.metrics["ndcg@20"] == pytest.approx(teacher.report.metrics["ndcg@20"])


def test_lightgcn_teacher_trains(data, tmp_path) -> None:
    art = train_teacher(
        data,
        TeacherConfig(model="lightgcn", dim=16, n_layers=2, epochs=5, batch_size=1024),
        tmp_path / "lg",
        device=CPU,
    )
    assert art.manifest.model == "lightgcn" and np.isfinite(art.item_emb).all()
    assert art.report is not None and (art.report.metrics["recall@20"] or 0) > 0


def test_unkd_recipe_options_warm_start_and_head_share_cap(
    data: Dataset, teacher: ModelArtifact, tmp_path: Path
) -> None:
    """warm_start='als' + head_share_cap='teacher' (docs/quality.md): the kept epoch's
    validation head share is at most the teacher's whenever any check met it."""
    from training.validation import scorer_validation

    cfg = DistillConfig(
        dim=8, warm_start="als", head_share_cap="teacher", lr=0.001, lambda_kd=1.0, **FAST
    )
    art = distill_student(data, teacher, cfg, tmp_path / "s", device=CPU)
    assert art.manifest.config is not None and art.manifest.config.warm_start == "als"  # type: ignore[union-attr]
    history = art.manifest.training.history  # type: ignore[union-attr]
    head = np.asarray(data.groups(4)) == 0
    scorer = EmbeddingScorer(teacher.user_emb, teacher.item_emb)
    cap = scorer_validation(scorer, data.csr("train"), data.csr("valid"), head_items=head)[
        "head_share@20"
    ]
    rows = [r.model_dump() for r in history]
    under = [r for r in rows if r["valid_head_share@20"] <= cap]
    best = art.manifest.training.best_epoch  # type: ignore[union-attr]
    if under:
        assert best == max(under, key=lambda r: r["valid_ndcg@20"])["epoch"]
    else:
        assert best == max(rows, key=lambda r: r["valid_ndcg@20"])["epoch"]


def test_als_warm_start_needs_an_mf_student(
    data: Dataset, teacher: ModelArtifact, tmp_path: Path
) -> None:
    cfg = DistillConfig(dim=8, warm_start="als", student_model="lightgcn", **FAST)
    with pytest.raises(ConfigError, match="warm_start='als' needs student_model='mf'"):
        distill_student(data, teacher, cfg, tmp_path / "s", device=CPU)


def test_auto_decay_is_the_density_rule_and_the_manifest_keeps_the_number(
    data: Dataset, teacher: ModelArtifact, tmp_path: Path
) -> None:
    from training.defaults import density_decay

    train = data.csr("train")
    density = train.nnz / (train.shape[0] * train.shape[1])
    assert density_decay(train) == pytest.approx(0.015 * density**-0.25)
    cfg = DistillConfig(method="none", dim=8, **FAST)
    assert cfg.decay == "auto"
    art = distill_student(data, teacher, cfg, tmp_path / "s", device=CPU)
    kept = art.manifest.config
    assert kept is not None and kept.decay == pytest.approx(density_decay(train), abs=1e-5)


def test_density_rule_grows_as_data_gets_sparser() -> None:
    import scipy.sparse as sp

    from training.defaults import DECAY_RANGE, density_decay

    def of(n: int, nnz: int) -> float:
        cells = np.random.default_rng(0).choice(n * n, size=nnz, replace=False)
        return density_decay(sp.csr_matrix((np.ones(nnz), (cells // n, cells % n)), shape=(n, n)))

    # MovieLens-100K's density (6.3 %) gives 0.03, Amazon-Beauty's (0.07 %) about 0.09.
    dense, sparse = of(100, 630), of(1000, 730)
    assert dense == pytest.approx(0.030, abs=0.001) and sparse == pytest.approx(0.092, abs=0.002)
    assert of(10_000, 1) == DECAY_RANGE[1]  # capped


def test_trials_of_one_teacher_rank_its_candidates_once(
    data: Dataset, teacher: ModelArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.distill import ranking

    built: list[int] = []
    real = ranking.teacher_candidates

    def counting(*args: object, **kw: object) -> ranking.CandidateLists:
        built.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ranking, "teacher_candidates", counting)
    monkeypatch.setattr(ranking, "CANDIDATE_CACHE", ranking.CandidateCache())
    import training.distill.base as base

    monkeypatch.setattr(base, "teacher_candidates", counting)
    monkeypatch.setattr(base, "CANDIDATE_CACHE", ranking.CANDIDATE_CACHE)
    fast = {**FAST, "epochs": 2, "warm_start": "none"}
    a = distill_student(
        data, teacher, DistillConfig(dim=8, lr=0.01, **fast), tmp_path / "a", device=CPU
    )
    b = distill_student(
        data,
        teacher,
        DistillConfig(dim=8, lr=0.02, lambda_kd=2.0, **fast),
        tmp_path / "b",
        device=CPU,
    )
    assert len(built) == 1  # the second student reused the lists
    assert not np.array_equal(a.user_emb, b.user_emb)
    distill_student(
        data, teacher, DistillConfig(dim=8, unkd={"top_l": 50}, **fast), tmp_path / "c", device=CPU
    )  # type: ignore[arg-type]
    assert len(built) == 2  # other list options: ranked again


def test_trials_of_one_teacher_fit_the_warm_start_and_rank_its_exposure_once(
    data: Dataset, teacher: ModelArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.pipelines as pipelines
    from training.process_cache import ProcessCache

    fits: list[float] = []
    exposures: list[int] = []
    real_fit, real_exposure = pipelines.fit_als, pipelines.exposure

    def counting_fit(*args: object, **kw: object) -> object:
        fits.append(1)
        return real_fit(*args, **kw)  # type: ignore[arg-type]

    def counting_exposure(*args: object, **kw: object) -> object:
        exposures.append(1)
        return real_exposure(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pipelines, "fit_als", counting_fit)
    monkeypatch.setattr(pipelines, "exposure", counting_exposure)
    warm: ProcessCache[object] = ProcessCache(max_entries=2)
    monkeypatch.setattr(pipelines, "WARM_START_CACHE", warm)
    monkeypatch.setattr(pipelines, "EXPOSURE_CACHE", ProcessCache(max_entries=2))
    fast = {**FAST, "epochs": 2, "warm_start": "als", "head_share_cap": "teacher"}
    grid = len(pipelines.WARM_START_GRID)

    def trial(name: str, **kw: object) -> ModelArtifact:
        cfg = DistillConfig(**{"dim": 8, **fast, **kw})  # type: ignore[arg-type]
        return distill_student(data, teacher, cfg, tmp_path / name, device=CPU)

    trial("a", lr=0.01)
    assert len(fits) == grid
    (chosen,) = warm._entries.values()
    before = np.array(chosen.user_emb, copy=True)  # type: ignore[attr-defined]
    after_a = len(exposures)
    trial("b", lr=0.02, lambda_kd=2.0)
    assert len(fits) == grid  # the second trial reused the chosen ALS factors
    # ... and the teacher's exposure: only the student's own is measured again
    assert len(exposures) - after_a == after_a - 1
    # The first student's training did not write into the shared factors.
    np.testing.assert_array_equal(chosen.user_emb, before)  # type: ignore[attr-defined]
    trial("c", dim=6)
    assert len(fits) == 2 * grid  # another size: fitted again


def test_small_mf_tables_train_dense_and_large_ones_sparse() -> None:
    from training.models.mf import DENSE_MAX_PARAMS, MF

    small = MF(100, 50, 10)
    assert not small.sparse and not small.user.sparse
    rows = DENSE_MAX_PARAMS // 10 + 1
    large = MF(rows, 1, 10)
    assert large.sparse and large.user.sparse and large.item.sparse
    grad_of = {}
    for name, model in (("small", small), ("large", MF(rows, 1, 10))):
        model.lookup().user(torch.tensor([0])).sum().backward()
        grad_of[name] = model.user.weight.grad
    assert grad_of["large"] is not None and grad_of["large"].is_sparse
    assert grad_of["small"] is not None and not grad_of["small"].is_sparse
