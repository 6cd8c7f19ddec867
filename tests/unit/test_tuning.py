"""training.tuning on tiny data, one process, in-memory storage: the best trial is the one
with the highest validation NDCG; a student's constraint excludes a trial whose validation
head share exceeds its teacher's; pruning stops a bad trial early; the report carries
every trial, and the model kept is the chosen trial's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState, create_trial

from training import pipelines
from training.checkpoint import ModelArtifact
from training.config import DistillConfig, TeacherConfig, TuneOptions
from training.dataset import Dataset
from training.evaluation import evaluate_embeddings
from training.manifest import DatasetInfo, ModelManifest, QualityReport, read_report
from training.tuning import (
    StudySetup,
    TuningError,
    open_study,
    retry,
    select_best,
    tune,
    validation_figures,
)
from training.tuning_space import SECOND_GUESSES, given_params, second_guesses, space_for, suggest

CPU = torch.device("cpu")
FAST = {"dim": 8, "epochs": 6, "batch_size": 256, "patience": 10}


def _train_teacher(ds: Dataset) -> Any:
    def train(cfg: Any, out: Path, on_progress: Any, should_stop: Any) -> ModelArtifact:
        return pipelines.train_teacher(
            ds, cfg, out, device=CPU, on_progress=on_progress, should_stop=should_stop
        )

    return train


def test_best_trial_has_the_highest_validation_ndcg(tiny_dataset: Dataset, tmp_path: Path) -> None:
    setup = StudySetup(
        tiny_dataset,
        TeacherConfig(model="mf", **FAST),
        TuneOptions(trials=3, prune=False),
        _train_teacher(tiny_dataset),
        tmp_path / "work",
    )
    seen: list[int] = []
    art = tune(setup, tmp_path / "best", on_trial=lambda t, n: seen.append(n))
    assert seen == [1, 2, 3]
    assert art.report is not None and art.report.tuning is not None
    summary = art.report.tuning
    assert [t.state for t in summary.trials] == ["complete"] * 3
    best = max(summary.trials, key=lambda t: t.valid_ndcg or -1.0)
    assert summary.best_trial == best.number and summary.best_feasible
    assert summary.trials[0].params == {"lr": 0.005, "decay": 0.01}  # trial 0: the job's own
    assert summary.constraint is None and all(t.feasible is None for t in summary.trials)
    # The kept model is that trial's: its validation figures are the trial's, its config the
    # trial's parameters, its id the output directory's.
    assert validation_figures(tiny_dataset, art).ndcg == pytest.approx(best.valid_ndcg)
    assert art.manifest.config is not None and art.manifest.config.lr == pytest.approx(
        best.params["lr"]
    )
    assert art.manifest.id == "best"
    assert read_report(tmp_path / "best").tuning == summary  # report.json round trip
    assert not (tmp_path / "work").exists(), "trial models are removed at the end"


def _fixed_model(
    ds: Dataset, user_emb: np.ndarray, item_emb: np.ndarray, out: Path, cfg: TeacherConfig
) -> ModelArtifact:
    report = QualityReport.model_validate(evaluate_embeddings(ds, user_emb, item_emb))
    manifest = ModelManifest(
        kind="teacher",
        model="mf",
        dim=user_emb.shape[1],
        config=cfg,
        dataset=DatasetInfo(fingerprint=ds.fingerprint),
    )
    art = ModelArtifact(user_emb, item_emb, manifest, report)
    art.save(out)
    return art


def _popular_or_random(ds: Dataset, base_lr: float) -> Any:
    """Trial 0 (the given lr) ranks by popularity: accurate and all head. Other trials are
    random embeddings: inaccurate, with a small head share."""
    rng = np.random.default_rng(0)

    def train(cfg: Any, out: Path, on_progress: Any, should_stop: Any) -> ModelArtifact:
        if cfg.lr == base_lr:
            pop = ds.popularity().astype(np.float32)[:, None]
            return _fixed_model(ds, np.ones((ds.n_users, 1), np.float32), pop, out, cfg)
        return _fixed_model(
            ds,
            rng.normal(size=(ds.n_users, 4)).astype(np.float32),
            rng.normal(size=(ds.n_items, 4)).astype(np.float32),
            out,
            cfg,
        )

    return train


@pytest.mark.parametrize("bound", [None, 0.25])
def test_constraint_excludes_a_trial_over_the_teachers_head_share(
    tiny_dataset: Dataset, tmp_path: Path, bound: float | None
) -> None:
    cfg = TeacherConfig(model="mf", **FAST)
    setup = StudySetup(
        tiny_dataset,
        cfg,
        TuneOptions(trials=3, prune=False),
        _popular_or_random(tiny_dataset, cfg.lr),
        tmp_path / "work",
        teacher_head_share=bound,
    )
    summary = tune(setup, tmp_path / "out").report.tuning  # type: ignore[union-attr]
    assert summary is not None
    popular, *randoms = summary.trials
    assert popular.valid_head_share is not None and popular.valid_head_share > 0.25
    assert all(r.valid_head_share is not None and r.valid_head_share < 0.25 for r in randoms)
    assert all(popular.valid_ndcg > (r.valid_ndcg or 0) for r in randoms)  # type: ignore[operator]
    if bound is None:  # unconstrained: the most accurate wins, head-heavy or not
        assert summary.best_trial == popular.number
        return
    assert popular.feasible is False and all(r.feasible for r in randoms)
    best_random = max(randoms, key=lambda t: t.valid_ndcg or -1.0)
    assert summary.best_trial == best_random.number and summary.best_feasible
    assert summary.constraint == "valid head_share@20 <= teacher's 0.2500"


def test_pruning_stops_a_bad_trial_early(tiny_dataset: Dataset, tmp_path: Path) -> None:
    cfg = TeacherConfig(model="mf", **{**FAST, "epochs": 8, "lr": 0.02})
    setup = StudySetup(
        tiny_dataset,
        cfg,
        TuneOptions(trials=2),
        _train_teacher(tiny_dataset),
        tmp_path / "work",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2),
    )
    storage = InMemoryStorage()
    study = open_study(setup, storage, "prune")  # trial 0: the given (good) configuration
    study.enqueue_trial({"lr": 1e-3, "decay": 0.1})  # trial 1: a slow, over-regularised one
    art = tune(setup, tmp_path / "out", storage=storage, study_name="prune")
    summary = art.report.tuning  # type: ignore[union-attr]
    assert summary is not None
    good, bad = summary.trials
    assert (good.state, good.epochs) == ("complete", 8)
    assert bad.state == "pruned" and bad.epochs is not None and 2 <= bad.epochs < 8, bad
    assert bad.valid_ndcg is not None and bad.valid_ndcg < (
        good.valid_ndcg or 0.0
    )  # the last reported
    assert bad.note and "behind the median" in bad.note
    assert summary.best_trial == good.number


def test_no_completed_trial_is_an_error(tiny_dataset: Dataset, tmp_path: Path) -> None:
    def diverge(cfg: Any, out: Path, on_progress: Any, should_stop: Any) -> ModelArtifact:
        from training.errors import TrainingDivergedError

        raise TrainingDivergedError("loss became nan at epoch 1")

    setup = StudySetup(
        tiny_dataset,
        TeacherConfig(model="mf", **FAST),
        TuneOptions(trials=2),
        diverge,
        tmp_path / "work",
    )
    with pytest.raises(TuningError, match="giving up"):
        tune(setup, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def _trial(number: int, value: float, violation: float | None) -> optuna.trial.FrozenTrial:
    t = create_trial(
        value=value,
        params={"lr": 0.01},
        distributions={"lr": FloatDistribution(1e-3, 0.1)},
        system_attrs={} if violation is None else {"constraints:h": violation},
    )
    t.number = number
    return t


def test_select_best_prefers_feasible_then_least_violating() -> None:
    assert select_best([]) is None
    trials = [
        _trial(0, 0.30, 0.1),
        _trial(1, 0.20, -0.1),
        _trial(2, 0.25, 0.0),
        _trial(3, 0.25, -0.2),
    ]
    assert select_best(trials).number == 2  # type: ignore[union-attr]  # feasible, tie -> earlier
    infeasible = [_trial(0, 0.30, 0.2), _trial(1, 0.10, 0.05)]
    assert select_best(infeasible).number == 1  # type: ignore[union-attr]  # least violating
    assert select_best([_trial(0, 0.1, None), _trial(1, 0.2, None)]).number == 1  # type: ignore[union-attr]


def test_search_spaces() -> None:
    assert {p.name for p in space_for(TeacherConfig(model="mf"))} == {"lr", "decay"}
    assert {p.name for p in space_for(TeacherConfig(model="als"))} == {
        "als.regularization",
        "als.alpha",
        "als.iterations",
    }
    assert {p.name for p in space_for(TeacherConfig(model="ease"))} == {"ease.l2"}
    assert {p.name for p in space_for(DistillConfig(method="none"))} == {"lr", "decay"}
    assert {p.name for p in space_for(DistillConfig(method="unkd"))} == {
        "lr",
        "decay",
        "lambda_kd",
        "unkd.mu",
    }
    study = optuna.create_study(direction="maximize")
    cfg = suggest(study.ask(), DistillConfig(method="cd", dim=12))
    assert isinstance(cfg, DistillConfig) and cfg.dim == 12 and 0.2 <= cfg.cd.temperature <= 5.0
    assert given_params(DistillConfig(method="unkd")) == {
        "lr": 0.001,
        "decay": 0.001,
        "lambda_kd": 1.0,
        "unkd.mu": 20.0,
    }
    assert "decay" not in given_params(
        TeacherConfig(model="mf", decay=0.5)
    )  # outside the range: sampled


def test_a_lost_trial_is_retried_once() -> None:
    study = optuna.create_study(direction="maximize")
    first = study.ask({"lr": FloatDistribution(1e-3, 0.1)})
    study.tell(first, state=TrialState.FAIL)
    assert retry(study, study.trials[0], "worker lost")
    assert not retry(study, study.trials[0], "worker lost")  # found stale twice: enqueued once
    again = (
        study.ask()
    )  # the enqueued configuration: its suggestions return the lost trial's values
    assert (
        again.suggest_float("lr", 1e-3, 0.1) == first.params["lr"]
        and again.user_attrs["retry_of"] == 0
    )
    study.tell(again, state=TrialState.FAIL)
    assert not retry(study, study.trials[1], "worker lost")  # a retry is not retried


def test_report_page_draws_the_trials_front() -> None:
    """The tuned model's page: one point per completed trial at (head share, NDCG) as the
    report says, the kept trial apart, the front through the undominated ones."""
    from service.reports.figures import pareto_front, tuning_front_chart
    from service.reports.render import render_report_page
    from service.reports.views import ModelView
    from tests.report_samples import sample_report
    from training.manifest import TrialRecord, TuningSummary

    rows = [(0.30, 0.20, True), (0.25, 0.35, True), (0.28, 0.10, True), (0.33, 0.60, False)]
    trials = [
        TrialRecord(
            number=i,
            state="complete",
            params={"lr": 0.01},
            valid_ndcg=n,
            valid_head_share=h,
            feasible=f,
        )
        for i, (n, h, f) in enumerate(rows)
    ]
    trials.append(
        TrialRecord(number=4, state="pruned", params={"lr": 0.05}, valid_ndcg=0.05, epochs=3)
    )
    summary = TuningSummary(
        objective="valid ndcg@20",
        constraint="valid head_share@20 <= teacher's 0.5",
        teacher_valid_head_share=0.5,
        trials_requested=5,
        best_trial=0,
        sampler="TPE",
        pruner="MedianPruner",
        trials=trials,
    )
    report = QualityReport.model_validate({**sample_report(1), "tuning": summary.model_dump()})
    view = ModelView(id="student-tuned", report=report)
    chart = tuning_front_chart(view)
    assert chart is not None and chart.point_count == 4 and chart.marker_x == 0.5
    points = {p.label: (p.x, p.y) for s in chart.series for p in s.points}
    assert points == {f"trial {i}": (h, n) for i, (n, h, _) in enumerate(rows)}
    assert [s.name for s in chart.series] == [
        "trials",
        "over the teacher's head share",
        "kept: trial 0",
    ]
    assert (
        chart.front
        == ((0.10, 0.28), (0.20, 0.30), (0.60, 0.33))
        == pareto_front([(h, n) for n, h, _ in rows])
    )
    page = render_report_page(view)
    assert page.count('data-series="kept: trial 0"') == 2  # legend and point
    assert '<tr data-trial="4" data-state="pruned">' in page and "★" in page
    assert (
        pareto_front([]) == ()
        and tuning_front_chart(
            ModelView(id="m", report=QualityReport.model_validate(sample_report(1)))
        )
        is None
    )


def test_unkd_studies_try_the_second_default_right_after_the_first(
    tiny_dataset: Dataset, tmp_path: Path
) -> None:
    from training.defaults import density_decay

    cfg = DistillConfig(method="unkd", dim=8)
    auto = density_decay(tiny_dataset.csr("train"))
    (guess,) = second_guesses(cfg, auto)
    assert guess == {**given_params(cfg), "lr": 0.01, "lambda_kd": 3.0, "decay": auto}
    assert second_guesses(DistillConfig(method="none"), auto) == []
    assert second_guesses(TeacherConfig(model="mf"), auto) == []
    assert set(SECOND_GUESSES) == {"unkd"}

    def never(*_: object) -> ModelArtifact:
        raise AssertionError("no trial runs in this test")

    setup = StudySetup(tiny_dataset, cfg, TuneOptions(trials=4), never, tmp_path / "w")
    study = open_study(setup, InMemoryStorage(), "s")
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [given_params(setup.base), guess]
