"""Hyper-parameter defaults: the documented values, and per-method defaults that apply only to
fields the caller left unset.

The expected values are written out here, not read from training.config: they are the ones
docs/quality.md documents ("The product's defaults"): weight decay by the density rule
("auto") for plain students and 0.01 for BPR teachers; every distillation method starts
from ALS factors with lr 0.001; UnKD takes decay 0.001, λ_KD = 1 and its epoch under the
teacher's head share; RRD decay 0.003. Changing a default without changing the docs and
this table fails here.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from training.budget import EASE_MAX_ITEMS
from training.cli import register
from training.config import METHODS, DistillConfig, EvalConfig, TeacherConfig, UnKDOptions
from training.defaults import default_teacher_model

# method: (decay, lambda_kd) a student gets when the caller sets neither.
DOCUMENTED_STUDENT_DEFAULTS: dict[str, tuple[float | str, float]] = {
    "none": ("auto", 1.0),
    "rd": ("auto", 1.0),
    "cd": ("auto", 1.0),
    "rrd": (0.003, 1.0),
    "unkd": (0.001, 1.0),
}
# method: (lr, warm_start, head_share_cap) of an MF student.
DOCUMENTED_RECIPE: dict[str, tuple[float, str, str]] = {
    "none": (0.01, "none", "none"),
    "rd": (0.001, "als", "none"),
    "cd": (0.001, "als", "none"),
    "rrd": (0.001, "als", "none"),
    "unkd": (0.001, "als", "teacher"),
}


def test_every_method_has_a_documented_default() -> None:
    assert set(METHODS) == set(DOCUMENTED_STUDENT_DEFAULTS)


@pytest.mark.parametrize("method", sorted(DOCUMENTED_STUDENT_DEFAULTS))
def test_student_defaults_are_the_documented_ones(method: str) -> None:
    cfg = DistillConfig(method=method)
    assert (cfg.decay, cfg.lambda_kd) == DOCUMENTED_STUDENT_DEFAULTS[method]


@pytest.mark.parametrize("method", sorted(DOCUMENTED_RECIPE))
def test_student_recipes_are_the_documented_ones(method: str) -> None:
    cfg = DistillConfig(method=method)
    assert (cfg.lr, cfg.warm_start, cfg.head_share_cap) == DOCUMENTED_RECIPE[method]
    assert (cfg.eval_every, cfg.patience, cfg.epochs) == (5, 4, 400)


def test_a_lightgcn_student_keeps_its_random_start() -> None:
    cfg = DistillConfig(method="unkd", student_model="lightgcn")
    assert (cfg.warm_start, cfg.lr) == ("none", 0.01)


def test_the_default_method_is_unkd_with_its_defaults() -> None:
    cfg = DistillConfig()
    assert (cfg.method, cfg.decay, cfg.lambda_kd) == ("unkd", 0.001, 1.0)


def test_teacher_and_unkd_defaults_are_the_documented_ones() -> None:
    assert (TeacherConfig().model, TeacherConfig().decay) == ("ease", 0.01)
    # Unset in a job: EASE where it fits, ALS on catalogues over EASE_MAX_ITEMS or the budget.
    assert default_teacher_model(1000, 2000) == "ease"
    assert default_teacher_model(1000, EASE_MAX_ITEMS + 1) == "als"
    assert default_teacher_model(1000, 20_000, limit_bytes=2**30) == "als"  # 3.2 GB solve
    cfg = DistillConfig(method="unkd")  # the cap is met by per-user head shifts
    assert (cfg.head_share_cap, cfg.cap_rule) == ("teacher", "shift")
    unkd = (
        UnKDOptions()
    )  # README: G = 4, L = 1000, N = min(30, 2 x interactions/user), P(r) ∝ exp(-r/20)
    assert (unkd.groups, unkd.top_l, unkd.pairs_per_user, unkd.mu) == (4, 1000, "auto", 20.0)
    assert EvalConfig().ks == (10, 20, 50)  # README: metrics @{10,20,50}


@pytest.mark.parametrize("method", sorted(DOCUMENTED_STUDENT_DEFAULTS))
def test_explicit_values_win_over_method_defaults(method: str) -> None:
    explicit = DistillConfig(method=method, decay=0.05, lambda_kd=0.5)
    assert (explicit.decay, explicit.lambda_kd) == (0.05, 0.5)
    decay, lambda_kd = DOCUMENTED_STUDENT_DEFAULTS[method]
    only_decay = DistillConfig(method=method, decay=0.05)  # the other field keeps its default
    assert (only_decay.decay, only_decay.lambda_kd) == (0.05, lambda_kd)
    only_kd = DistillConfig(method=method, lambda_kd=0.5)
    assert (only_kd.decay, only_kd.lambda_kd) == (decay, 0.5)


def test_an_explicit_value_equal_to_the_base_default_is_kept() -> None:
    # Set, not merely equal to a base default (DistillConfig's lr 0.01): UnKD must not override it.
    cfg = DistillConfig(method="unkd", decay=0.01, lambda_kd=3.0, lr=0.01)
    assert (cfg.decay, cfg.lambda_kd, cfg.lr) == (0.01, 3.0, 0.01)


def test_a_config_round_trips_through_json() -> None:
    cfg = DistillConfig(method="unkd", dim=12)
    again = DistillConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg
    assert (again.decay, again.lambda_kd) == (0.001, 1.0)


def test_cli_leaves_unset_flags_to_the_method_defaults() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    from training.cli import _optim_values

    a = parser.parse_args(["distill", "data", "--teacher", "t", "--out", "o", "--method", "unkd"])
    assert _optim_values(a) == {} and a.lambda_kd is None
    a = parser.parse_args(["distill", "data", "--teacher", "t", "--out", "o", "--decay", "0.2"])
    assert _optim_values(a) == {"decay": 0.2}
    a = parser.parse_args(["distill", "data", "--teacher", "t", "--out", "o", "--decay", "auto"])
    assert _optim_values(a) == {"decay": "auto"}
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "data", "--teacher", "t", "--out", "o", "--decay", "lots"])


def test_unkd_pairs_per_user_follow_the_interactions_per_user() -> None:
    """auto: min(30, floor(2 x training interactions per user)), at least one per group; the
    number used is resolved into the config (the manifest records it, never "auto")."""
    import scipy.sparse as sp

    from training.defaults import resolve, unkd_pairs_per_user

    def train(n_users: int, per_user: int) -> sp.csr_matrix:
        rows = np.repeat(np.arange(n_users), per_user)
        cols = np.concatenate([np.arange(per_user) for _ in range(n_users)])
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, 200))

    assert unkd_pairs_per_user(train(10, 7), groups=4) == 14  # sparse: 2 x 7
    assert unkd_pairs_per_user(train(10, 85), groups=4) == 30  # dense: the paper's 30
    assert unkd_pairs_per_user(train(10, 1), groups=4) == 4  # at least one per group
    cfg = resolve(DistillConfig(method="unkd"), train(10, 7))
    assert cfg.unkd.pairs_per_user == 14 and isinstance(cfg.decay, float)
    explicit = resolve(DistillConfig(method="unkd", unkd={"pairs_per_user": 30}), train(10, 7))  # type: ignore[arg-type]
    assert explicit.unkd.pairs_per_user == 30
