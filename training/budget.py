"""Memory a training job will need, estimated from its sizes and hyper-parameters.

Torch-free (the API imports it to refuse an oversized job at submission, the worker to
fail one before it allocates anything). The estimate counts the big tensors only, so it
is a lower bound: a job over the budget by this count would certainly be over it in fact.
"""

from __future__ import annotations

from training.config import DistillConfig, TeacherConfig
from training.errors import ConfigError

FLOAT_BYTES = 4
INDEX_BYTES = 4  # teacher candidate lists are int32 (training/distill/ranking.py)
# (Sparse)Adam keeps, for every parameter, the value and two dense moment estimates; the
# gradient of a sparse embedding is only the batch's rows, so it is not counted.
ADAM_COPIES = 3
# EASE solves a dense n_items x n_items system: memory grows as n_items², time as n_items³.
# Measured (docs/teachers.md) on 2 shared CPU cores: 12,000 items 49 s and 1.1 GiB; 30,000
# items 4 min (up to ~15 min on busier cores) and 6.7 GiB. Above it, `als` is the teacher.
EASE_MAX_ITEMS = 30_000


class MemoryBudgetError(ValueError):
    """A job whose estimated memory exceeds the limit. `field` is the parameter to lower."""

    def __init__(self, field: str, needed: int, limit: int, what: str, hint: str = "") -> None:
        self.field, self.needed, self.limit = field, needed, limit
        super().__init__(
            f"{field}: {what} needs about {needed / 2**20:,.0f} MiB, over the "
            f"max_job_memory_mb={limit / 2**20:,.0f} MiB limit; "
            f"{hint or f'lower {field} or use a smaller dataset'}"
        )


class EASETooLargeError(ConfigError):
    """An EASE teacher asked for a catalogue above EASE_MAX_ITEMS. `field` is "model"."""

    field = "model"

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        super().__init__(
            f"model='ease': {n_items:,} items is over EASE's limit of {EASE_MAX_ITEMS:,} items "
            f"(a dense n_items x n_items solve: about {ease_bytes(n_items) / 2**30:,.1f} GiB and "
            "O(n_items³) time); use model='als' for this catalogue"
        )


def check_ease_items(n_items: int) -> None:
    """EASETooLargeError when an EASE teacher cannot be fitted on `n_items` items."""
    if n_items > EASE_MAX_ITEMS:
        raise EASETooLargeError(n_items)


def ease_bytes(n_items: int) -> int:
    """Peak of the EASE solve: XᵀX + λI and its Cholesky factor (then P, then B, in place)."""
    return 2 * n_items * n_items * FLOAT_BYTES


def _model_bytes(n_users: int, n_items: int, dim: int, model: str, n_layers: int) -> int:
    """Embedding tables with optimiser state, plus LightGCN's per-layer propagated copies."""
    table = (n_users + n_items) * dim * FLOAT_BYTES
    layers = n_layers + 1 if model == "lightgcn" else 0
    return table * (ADAM_COPIES + layers)


def _eval_bytes(n_items: int, user_chunk: int = 1024) -> int:
    """Evaluation scores one chunk of users against every item at a time."""
    return user_chunk * n_items * FLOAT_BYTES * 2


def teacher_bytes(n_users: int, n_items: int, cfg: TeacherConfig) -> int:
    """mf/lightgcn: tables with Adam state; als: the two factor tables; ease: the solve."""
    if cfg.model == "ease":
        return ease_bytes(n_items) + _eval_bytes(n_items)
    if cfg.model == "als":
        return (n_users + n_items) * cfg.dim * FLOAT_BYTES + _eval_bytes(n_items)
    return _model_bytes(n_users, n_items, cfg.dim, cfg.model, cfg.n_layers) + _eval_bytes(n_items)


def lists_mapped(n_users: int, cfg: DistillConfig, fanout_min_users: int) -> bool:
    """True when a distill job's candidate lists stay on disk: a job over `fanout_min_users`
    users ranks them in shards (worker/fanout.py) that training reads by memory map, except
    RRD, which reads them into memory (training/distill/shards.py)."""
    return cfg.method not in ("none", "rrd") and n_users >= fanout_min_users


def distill_bytes(
    n_users: int,
    n_items: int,
    cfg: DistillConfig,
    teacher_dim: int,
    teacher_model: str = "mf",
    mapped: bool = False,
) -> int:
    """Student tables + the teacher (embeddings, or EASE's B) + the precomputed rankings
    (CD keeps the teacher's score beside each ranked item). mapped (`lists_mapped`): the
    rankings sit in the page cache, not in the process, and are not counted."""
    width = {
        "unkd": cfg.unkd.groups * cfg.unkd.list_length,
        "rd": cfg.rd.top_k,
        "cd": cfg.cd.top_l,
        "rrd": cfg.rrd.top_l,
    }.get(cfg.method, 0)
    per_entry = INDEX_BYTES + (FLOAT_BYTES if cfg.method == "cd" else 0)
    candidates = 0 if mapped else n_users * min(width, n_items) * per_entry
    if teacher_model == "ease":
        teacher = n_items * n_items * FLOAT_BYTES
    else:
        teacher = (n_users + n_items) * teacher_dim * FLOAT_BYTES
    student = _model_bytes(n_users, n_items, cfg.dim, cfg.student_model, cfg.n_layers)
    return student + teacher + candidates + _eval_bytes(n_items)


def check_teacher(n_users: int, n_items: int, cfg: TeacherConfig, limit_bytes: int) -> int:
    """The estimate; MemoryBudgetError naming `dim` when it exceeds `limit_bytes`.

    An EASE teacher over more than EASE_MAX_ITEMS items raises EASETooLargeError (naming
    `model` and `als`) first, whatever the memory limit.
    """
    if cfg.model == "ease":
        check_ease_items(n_items)
    needed = teacher_bytes(n_users, n_items, cfg)
    if needed > limit_bytes and cfg.model == "ease":
        raise MemoryBudgetError(
            "model",
            needed,
            limit_bytes,
            f"an ease teacher over {n_items:,} items",
            hint="use model='als' or a smaller catalogue",
        )
    if needed > limit_bytes:
        raise MemoryBudgetError(
            "dim",
            needed,
            limit_bytes,
            f"a {cfg.model} teacher of dim={cfg.dim} over {n_users:,} users x {n_items:,} items",
        )
    return needed


def check_distill(
    n_users: int,
    n_items: int,
    cfg: DistillConfig,
    teacher_dim: int,
    limit_bytes: int,
    teacher_model: str = "mf",
    mapped: bool = False,
) -> int:
    """The estimate; MemoryBudgetError naming the larger contributor when over the limit.
    mapped: the job's lists stay on disk (`lists_mapped`)."""
    needed = distill_bytes(n_users, n_items, cfg, teacher_dim, teacher_model, mapped)
    if needed > limit_bytes:
        student = _model_bytes(n_users, n_items, cfg.dim, cfg.student_model, cfg.n_layers)
        field = "dim" if student * 2 >= needed else f"{cfg.method}.top_l"
        if cfg.method == "rd" and field != "dim":
            field = "rd.top_k"
        raise MemoryBudgetError(
            field,
            needed,
            limit_bytes,
            f"distilling ({cfg.method}, student dim={cfg.dim}) over "
            f"{n_users:,} users x {n_items:,} items",
        )
    return needed
