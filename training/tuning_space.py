"""The search spaces of tuning studies (training.tuning): which fields a study samples for a
teacher model or a student method, and over which ranges (docs/tuning.md has the table).

A dotted name reaches into an options block ("unkd.mu", "als.alpha"); a field the config
class does not have is left out, so a space never names a field that cannot be set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import Trial

from training.config import DistillConfig, TeacherConfig

Config = TeacherConfig | DistillConfig


class TuningError(ValueError):
    """A study that cannot give a model: every trial failed, or no search space."""


@dataclass(frozen=True)
class Param:
    """One searched field; a dotted name reaches into an options block ("unkd.mu")."""

    name: str
    low: float
    high: float
    log: bool = True
    integer: bool = False


_BPR = (Param("lr", 3e-4, 5e-2), Param("decay", 1e-5, 3e-1))
TEACHER_SPACES: dict[str, tuple[Param, ...]] = {
    "mf": _BPR,
    "lightgcn": _BPR,
    "als": (
        Param("als.regularization", 1e-3, 1e3),
        Param("als.alpha", 0.5, 100.0),
        Param("als.iterations", 5, 50, log=False, integer=True),
    ),
    "ease": (Param("ease.l2", 1.0, 1e4),),
}
# Every student: the optimiser and λ_KD; then the options of its method.
STUDENT_SPACE = (*_BPR, Param("lambda_kd", 0.1, 10.0))
METHOD_SPACES: dict[str, tuple[Param, ...]] = {
    "none": (),
    "unkd": (Param("unkd.mu", 5.0, 100.0),),
    "rd": (Param("rd.rank_lambda", 1.0, 50.0),),
    "cd": (Param("cd.rank_lambda", 5.0, 100.0), Param("cd.temperature", 0.2, 5.0)),
    "rrd": (Param("rrd.rank_lambda", 1.0, 50.0),),
}


def _has_field(cfg: Config, name: str) -> bool:
    """Whether the (possibly dotted) field exists in this config class."""
    node: Any = cfg
    for part in name.split("."):
        if part not in getattr(type(node), "model_fields", {}):
            return False
        node = getattr(node, part)
    return True


def _get(cfg: Config, name: str) -> Any:
    node: Any = cfg
    for part in name.split("."):
        node = getattr(node, part)
    return node


def space_for(cfg: Config) -> tuple[Param, ...]:
    """The fields a study searches for `cfg`: per teacher model, or per student method
    (a plain `none` student has no λ_KD). dim, epochs, batch size and seed stay as given."""
    if isinstance(cfg, DistillConfig):
        base = STUDENT_SPACE if cfg.method != "none" else _BPR
        space = base + METHOD_SPACES.get(cfg.method, ())
    else:
        space = TEACHER_SPACES.get(cfg.model, ())
    space = tuple(p for p in space if _has_field(cfg, p.name))
    if not space:
        what = f"method {cfg.method}" if isinstance(cfg, DistillConfig) else f"model {cfg.model}"
        raise TuningError(f"no search space for {what}")
    return space


def suggest(trial: Trial, cfg: Config) -> Config:
    """`cfg` with the searched fields sampled by `trial` (validated again)."""
    data = cfg.model_dump()
    for p in space_for(cfg):
        if p.integer:
            value: float = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            value = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        *path, leaf = p.name.split(".")
        node = data
        for part in path:
            node = node[part]
        node[leaf] = value
    return type(cfg).model_validate(data)


# Configurations a study of a student method tries right after the job's own (trial 0), before
# TPE takes over: a second default that wins where the first cannot. UnKD's default (lr 0.001,
# λ 1, decay 0.001) is the most accurate on MovieLens-100K and Amazon-Beauty but never gets
# under the teacher's head share on the synthetic data; lr 0.01, λ 3 and the density-rule
# decay does there (validation NDCG@20 0.2256, head share 0.514 under the teacher's 0.526)
# and loses elsewhere (docs/quality.md, "The product's defaults").
SECOND_GUESSES: dict[str, tuple[dict[str, float | str], ...]] = {
    "unkd": ({"lr": 0.01, "decay": "auto", "lambda_kd": 3.0},),
}


def second_guesses(cfg: Config, auto_decay: float) -> list[dict[str, Any]]:
    """The SECOND_GUESSES of cfg's method as trial parameters (decay "auto" -> auto_decay),
    each completing trial 0's parameters; none for a teacher or a method without any."""
    if not isinstance(cfg, DistillConfig):
        return []
    base = given_params(cfg)
    out = []
    for guess in SECOND_GUESSES.get(cfg.method, ()):
        params = {**base, **{k: auto_decay if v == "auto" else v for k, v in guess.items()}}
        if params != base:
            out.append(params)
    return out


def given_params(cfg: Config) -> dict[str, Any]:
    """The job's own values of the searched fields (those inside the ranges): trial 0."""
    out = {}
    for p in space_for(cfg):
        value = _get(cfg, p.name)
        if isinstance(value, int | float) and p.low <= value <= p.high:  # "auto": not a number yet
            out[p.name] = int(value) if p.integer else float(value)
    return out
