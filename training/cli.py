"""Offline commands of `unkd`: prepare data, train a teacher, distil, evaluate.

`register(subparsers)` adds them to the `unkd` parser (service/cli.py). Heavy imports
(torch) happen inside the handlers so `unkd --help` stays instant.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.budget import EASE_MAX_ITEMS
from training.config import (
    METHOD_DEFAULTS,
    METHODS,
    TEACHER_MODELS,
    ALSOptions,
    DistillConfig,
    EASEOptions,
    TeacherConfig,
    TeacherModelName,
)
from training.defaults import default_teacher_model


def _friendly(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input ends the command with one clear line on stderr and exit status 2."""
    from pydantic import ValidationError

    from training.errors import ConfigError, DataError, FingerprintMismatchError

    @functools.wraps(func)
    def run(a: argparse.Namespace) -> int:
        try:
            return func(a)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            print(f"error: {field}: {err['msg']} (got {err.get('input')!r})", file=sys.stderr)
        except (DataError, ConfigError, FingerprintMismatchError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        return 2

    return run


class _Bar:
    """A tqdm bar over epochs, driven by the trainer's progress callback."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=desc, unit="epoch", file=sys.stderr, leave=True)

    def __call__(self, event: Any) -> None:
        if event.stage != "train":
            self.bar.set_postfix_str(event.stage)
            return
        self.bar.total = event.epochs
        self.bar.n = event.epoch
        post = {"loss": f"{event.loss:.4f}"} if event.loss is not None else {}
        post.update({k.replace("valid_", ""): f"{v:.4f}" for k, v in event.metrics.items()})
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class _TrialBar:
    """A tqdm bar over the trials of a tuning study (`--tune N`); the postfix follows the
    running trial's epochs and the best validation NDCG so far."""

    def __init__(self, desc: str, trials: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=trials, desc=desc, unit="trial", file=sys.stderr, leave=True)
        self.best: float | None = None

    def epoch(self, event: Any) -> None:
        if event.stage == "train" and event.epochs:
            best = "–" if self.best is None else f"{self.best:.4f}"
            self.bar.set_postfix_str(f"epoch {event.epoch}/{event.epochs} · best ndcg@20 {best}")

    def trial(self, trial: Any, finished: int) -> None:
        value = trial.user_attrs.get("valid_ndcg")
        if value is not None and (self.best is None or value > self.best):
            self.best = value
        self.bar.n = finished
        self.bar.set_postfix_str(f"trial {trial.number} {trial.state.name.lower()}")
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _tuned(
    a: argparse.Namespace,
    ds: Any,
    cfg: TeacherConfig | DistillConfig,
    teacher_dir: Path | None = None,
) -> Any:
    """`--tune N`: a study of N trials (training.tuning) in this process; the best model
    on validation is saved to --out with the trials in its report."""
    import optuna

    from training.checkpoint import ModelArtifact
    from training.config import MAX_TRIALS, TuneOptions
    from training.device import resolve_device
    from training.errors import ConfigError
    from training.pipelines import distill_student, train_teacher
    from training.tuning import StudySetup, tune, validation_figures

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar says it; no per-trial lines
    if not 1 <= a.tune <= MAX_TRIALS:
        raise ConfigError(f"--tune {a.tune}: the number of trials must be 1 to {MAX_TRIALS}")
    options = TuneOptions(trials=a.tune)
    device = resolve_device(a.device)
    out = Path(a.out)
    teacher = ModelArtifact.load(teacher_dir) if teacher_dir is not None else None

    def train(c: Any, trial_out: Path, on_progress: Any, should_stop: Any) -> Any:
        if teacher is None:
            return train_teacher(
                ds,
                c,
                trial_out,
                device=device,
                on_progress=on_progress,
                should_stop=should_stop,
                model_id=out.name,
            )
        return distill_student(
            ds,
            teacher,
            c,
            trial_out,
            device=device,
            on_progress=on_progress,
            should_stop=should_stop,
            model_id=out.name,
        )

    bound = None
    if teacher is not None:
        teacher.check_dataset(ds.fingerprint)
        bound = validation_figures(ds, teacher, device=device).head_share
    work = out.parent / f".{out.name}.tune-{os.getpid()}"
    setup = StudySetup(ds, cfg, options, train, work, teacher_head_share=bound, device=device)
    bar = _TrialBar(f"tuning {out.name}", options.trials)
    try:
        return tune(setup, out, model_id=out.name, on_trial=bar.trial, on_progress=bar.epoch)
    finally:
        bar.close()


def _saved(a: argparse.Namespace, art: Any) -> int:
    from training.evaluation import render_table

    print(render_table(art.report))
    _print_cap(art)
    tuning = art.report.tuning if art.report is not None else None
    if tuning is not None:
        best = next(t for t in tuning.trials if t.number == tuning.best_trial)
        print(
            f"tuned: trial {best.number} of {len(tuning.trials)} kept, valid ndcg@20 "
            f"{best.valid_ndcg:.4f}, params {json.dumps(best.params)}"
        )
    print(f"saved to {a.out}")
    return 0


def _load(data: str) -> Any:
    from training.prepare import load_dataset

    return load_dataset(Path(data))


def _decay(text: str) -> float | str:
    """--decay: a number, or auto (the density rule, training.defaults)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def _optim_args(
    p: argparse.ArgumentParser, defaults: type[TeacherConfig] | type[DistillConfig]
) -> None:
    # Defaults are None so that unset flags stay unset: a method's own defaults
    # (training.config.METHOD_DEFAULTS) then apply, exactly as for an API job.
    f = defaults.model_fields
    p.add_argument(
        "--epochs",
        type=int,
        help=f"maximum epochs, early stopping ends sooner (default {f['epochs'].default})",
    )
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {f['lr'].default})")
    p.add_argument(
        "--decay",
        type=_decay,
        help=f"L2 weight decay, a number or auto (0.015 x density^-1/4) (default "
        f"{f['decay'].default}; see METHOD_DEFAULTS)",
    )
    p.add_argument("--batch-size", type=int, help=f"default {f['batch_size'].default}")
    p.add_argument(
        "--patience",
        type=int,
        help=f"validation checks without improvement (default {f['patience'].default})",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        help=f"epochs between validation checks (default {f['eval_every'].default})",
    )
    p.add_argument("--seed", type=int, help=f"default {f['seed'].default}")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--tune",
        type=int,
        metavar="N",
        help="tune on the validation split: train N configurations (Optuna TPE, "
        "pruned), keep the best (docs/tuning.md)",
    )


def _teacher_options(a: argparse.Namespace) -> dict[str, Any]:
    """The als / ease flags the user gave, as nested option dicts (errors name als.<field>)."""
    als = {
        k: v
        for k, v in (
            ("regularization", a.als_reg),
            ("alpha", a.als_alpha),
            ("iterations", a.als_iterations),
        )
        if v is not None
    }
    ease = {"l2": a.ease_l2} if a.ease_l2 is not None else {}
    return {**({"als": als} if als else {}), **({"ease": ease} if ease else {})}


def _optim_values(a: argparse.Namespace) -> dict[str, Any]:
    """The optimisation flags the user gave (unset ones keep the config's defaults)."""
    names = ("epochs", "lr", "decay", "batch_size", "patience", "eval_every", "seed")
    return {n: getattr(a, n) for n in names if getattr(a, n) is not None}


@_friendly
def cmd_prepare(a: argparse.Namespace) -> int:
    from training.prepare import prepare_dataset

    ds = prepare_dataset(
        Path(a.input),
        fmt=a.format,
        split=a.split,
        seed=a.seed,
        min_user_interactions=a.min_user,
        min_item_interactions=a.min_item,
    )
    ds.save(Path(a.out))
    print(
        json.dumps({"path": str(a.out), "fingerprint": ds.fingerprint, **ds.statistics()}, indent=2)
    )
    return 0


@_friendly
def cmd_synthetic(a: argparse.Namespace) -> int:
    from training.synthetic import SYNTHETIC_DEFAULTS, generate_synthetic

    params = {
        **SYNTHETIC_DEFAULTS,
        **{k: v for k, v in vars(a).items() if k in SYNTHETIC_DEFAULTS and v is not None},
    }
    ds = generate_synthetic(**params)
    ds.save(Path(a.out))
    print(
        json.dumps({"path": str(a.out), "fingerprint": ds.fingerprint, **ds.statistics()}, indent=2)
    )
    return 0


@_friendly
def cmd_train_teacher(a: argparse.Namespace) -> int:
    from training.device import resolve_device
    from training.evaluation import render_table
    from training.pipelines import train_teacher

    ds = _load(a.data)
    model: TeacherModelName = a.model or default_teacher_model(ds.n_users, ds.n_items)
    cfg = TeacherConfig(
        model=model, dim=a.dim, n_layers=a.layers, **_teacher_options(a), **_optim_values(a)
    )
    if a.tune is not None:
        return _saved(a, _tuned(a, ds, cfg))
    bar = _Bar(f"teacher {a.model}-{a.dim}")
    try:
        art = train_teacher(ds, cfg, Path(a.out), device=resolve_device(a.device), on_progress=bar)
    finally:
        bar.close()
    print(render_table(art.report))
    print(f"saved to {a.out}")
    return 0


@_friendly
def cmd_distill(a: argparse.Namespace) -> int:
    from training.device import resolve_device
    from training.evaluation import render_table
    from training.pipelines import distill_student

    extra: dict[str, Any] = {"lambda_kd": a.lambda_kd} if a.lambda_kd is not None else {}
    extra.update(
        {
            k: v
            for k, v in (("warm_start", a.warm_start), ("head_share_cap", a.head_share_cap))
            if v is not None
        }
    )
    cfg = DistillConfig(
        method=a.method,
        dim=a.dim,
        student_model=a.student_model,
        # a dict, not UnKDOptions(...): its errors then name the field as unkd.<field>
        unkd={  # type: ignore[arg-type]
            "groups": a.groups,
            "mu": a.mu,
            "top_l": a.top_l,
            **({} if a.pairs_per_user is None else {"pairs_per_user": a.pairs_per_user}),
        },
        **extra,
        **_optim_values(a),
    )
    ds = _load(a.data)
    if a.tune is not None:
        return _saved(a, _tuned(a, ds, cfg, Path(a.teacher)))
    bar = _Bar(f"{a.method} student {a.student_model}-{a.dim}")
    try:
        art = distill_student(
            ds, Path(a.teacher), cfg, Path(a.out), device=resolve_device(a.device), on_progress=bar
        )
    finally:
        bar.close()
    print(render_table(art.report))
    _print_cap(art)
    print(f"saved to {a.out}")
    return 0


def _print_cap(art: Any) -> None:
    """A capped student's line: met or missed, with both figures (never silent)."""
    cap = art.manifest.training.head_share_cap if art.manifest.training else None
    if cap is not None:
        print(cap.summary())


@_friendly
def cmd_evaluate(a: argparse.Namespace) -> int:
    from training.device import resolve_device
    from training.evaluation import render_table
    from training.pipelines import evaluate_model

    report = evaluate_model(_load(a.data), Path(a.model), device=resolve_device(a.device))
    print(json.dumps(report.model_dump(mode="json"), indent=2) if a.json else render_table(report))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the offline commands to the `unkd` parser."""
    data = sub.add_parser("data", help="prepare datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser(
        "prepare", help="read an interactions file, split it, save a dataset artifact"
    )
    p.add_argument(
        "input", help="CSV/TSV, Parquet, RecBole .inter, MovieLens u.data/ratings.dat, or 'lines'"
    )
    p.add_argument("--out", required=True, help="dataset artifact directory to write")
    p.add_argument(
        "--format", default="auto", help="auto | csv | tsv | parquet | recbole | movielens | lines"
    )
    p.add_argument(
        "--split",
        default="auto",
        help="auto (given column, else random) | random | temporal | given",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-user", type=int, default=1, help="drop users with fewer interactions")
    p.add_argument("--min-item", type=int, default=1, help="drop items with fewer interactions")
    p.set_defaults(func=cmd_prepare)

    p = dsub.add_parser(
        "synthetic", help="generate the built-in synthetic dataset (known true preferences)"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--n-users", dest="n_users", type=int)
    p.add_argument("--n-items", dest="n_items", type=int)
    p.add_argument("--skew", type=float, help="popularity skew of exposure (0 = none)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_synthetic)

    als, ease = ALSOptions(), EASEOptions()
    p = sub.add_parser(
        "train-teacher", help="train a teacher: mf or lightgcn (BPR), als (implicit) or ease"
    )
    p.add_argument("data", help="dataset artifact directory or raw interactions file")
    p.add_argument(
        "--model",
        choices=list(TEACHER_MODELS),
        default=None,
        help="mf | lightgcn (BPR) | als (implicit ALS) | ease (closed form, catalogues "
        f"up to {EASE_MAX_ITEMS:,} items) (docs/teachers.md); default: ease, or als on "
        "larger catalogues",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=TeacherConfig.model_fields["dim"].default,
        help="embedding size of mf, lightgcn and als (ease has none)",
    )
    p.add_argument("--layers", type=int, default=3, help="LightGCN layers")
    p.add_argument(
        "--als-alpha", type=float, help=f"ALS confidence of an interaction (default {als.alpha})"
    )
    p.add_argument(
        "--als-reg", type=float, help=f"ALS regularization (default {als.regularization})"
    )
    p.add_argument("--als-iterations", type=int, help=f"ALS iterations (default {als.iterations})")
    p.add_argument("--ease-l2", type=float, help=f"EASE λ (default {ease.l2})")
    p.add_argument("--out", required=True, help="model directory to write")
    _optim_args(p, TeacherConfig)
    p.set_defaults(func=cmd_train_teacher)

    d = DistillConfig.model_fields
    u = DistillConfig().unkd
    p = sub.add_parser("distill", help="distil a teacher into a small student")
    p.add_argument("data", help="dataset artifact directory or raw interactions file")
    p.add_argument("--teacher", required=True, help="teacher model directory")
    p.add_argument("--method", default="unkd", help=" | ".join(METHODS))
    p.add_argument("--dim", type=int, default=d["dim"].default)
    p.add_argument("--student-model", choices=["mf", "lightgcn"], default="mf")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--lambda-kd",
        type=float,
        help=f"weight of the KD loss (default {d['lambda_kd'].default}; "
        f"unkd: {METHOD_DEFAULTS['unkd']['lambda_kd']})",
    )
    p.add_argument(
        "--warm-start",
        choices=["none", "als"],
        help="als: start the MF student from ALS factors of its size (default: als for "
        "the distillation methods, none for the plain student)",
    )
    p.add_argument(
        "--head-share-cap",
        choices=["none", "teacher"],
        help="teacher: choose the epoch among those whose validation head share is at "
        "most the teacher's (default: teacher for unkd, else none)",
    )
    p.add_argument("--groups", type=int, default=u.groups, help="UnKD popularity groups G")
    p.add_argument(
        "--pairs-per-user",
        type=int,
        default=None,
        help="UnKD pairs per user per epoch (default: min(30, 2 x training interactions per user))",
    )
    p.add_argument("--mu", type=float, default=u.mu, help="UnKD rank-sampling temperature")
    p.add_argument("--top-l", type=int, default=u.top_l, help="UnKD candidates per (user, group)")
    _optim_args(p, DistillConfig)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="print a model's quality report")
    p.add_argument("data", help="dataset artifact directory or raw interactions file")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)
