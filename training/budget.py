"""Memory a training job will need, estimated from its sizes and hyper-parameters.

Torch-free (the API imports it to refuse an oversized job at submission, the worker to
fail one before it allocates anything). The estimate counts the big tensors only, so it
is a lower bound: a job over the budget by this count would certainly be over it in fact.
"""

from __future__ import annotations

from training.config import DistillConfig, TeacherConfig

FLOAT_BYTES = 4
INDEX_BYTES = 4  # teacher candidate lists are int32 (training/distill/ranking.py)
# (Sparse)Adam keeps, for every parameter, the value and two dense moment estimates; the
# gradient of a sparse embedding is only the batch's rows, so it is not counted.
ADAM_COPIES = 3


class MemoryBudgetError(ValueError):
    """A job whose estimated memory exceeds the limit. `field` is the parameter to lower."""

    def __init__(self, field: str, needed: int, limit: int, what: str) -> None:
        self.field, self.needed, self.limit = field, needed, limit
        super().__init__(
            f"{field}: {what} needs about {needed / 2**20:,.0f} MiB, over the "
            f"max_job_memory_mb={limit / 2**20:,.0f} MiB limit; lower {field} or use a smaller dataset"
        )


def _model_bytes(n_users: int, n_items: int, dim: int, model: str, n_layers: int) -> int:
    """Embedding tables with optimiser state, plus LightGCN's per-layer propagated copies."""
    table = (n_users + n_items) * dim * FLOAT_BYTES
    layers = n_layers + 1 if model == "lightgcn" else 0
    return table * (ADAM_COPIES + layers)


def _eval_bytes(n_items: int, user_chunk: int = 1024) -> int:
    """Evaluation scores one chunk of users against every item at a time."""
    return user_chunk * n_items * FLOAT_BYTES * 2


def teacher_bytes(n_users: int, n_items: int, cfg: TeacherConfig) -> int:
    return _model_bytes(n_users, n_items, cfg.dim, cfg.model, cfg.n_layers) + _eval_bytes(n_items)


def distill_bytes(n_users: int, n_items: int, cfg: DistillConfig, teacher_dim: int) -> int:
    """Student tables + the teacher's embeddings + the precomputed teacher rankings."""
    width = {
        "unkd": cfg.unkd.groups * cfg.unkd.top_l,
        "rd": cfg.rd.top_k,
        "cd": cfg.cd.top_l,
        "rrd": cfg.rrd.top_l,
    }.get(cfg.method, 0)
    candidates = n_users * min(width, n_items) * INDEX_BYTES
    teacher = (n_users + n_items) * teacher_dim * FLOAT_BYTES
    student = _model_bytes(n_users, n_items, cfg.dim, cfg.student_model, cfg.n_layers)
    return student + teacher + candidates + _eval_bytes(n_items)


def check_teacher(n_users: int, n_items: int, cfg: TeacherConfig, limit_bytes: int) -> int:
    """The estimate; MemoryBudgetError naming `dim` when it exceeds `limit_bytes`."""
    needed = teacher_bytes(n_users, n_items, cfg)
    if needed > limit_bytes:
        raise MemoryBudgetError(
            "dim", needed, limit_bytes, f"a {cfg.model} teacher of dim={cfg.dim} over "
            f"{n_users:,} users x {n_items:,} items",
        )  # fmt: skip
    return needed


def check_distill(
    n_users: int, n_items: int, cfg: DistillConfig, teacher_dim: int, limit_bytes: int
) -> int:
    """The estimate; MemoryBudgetError naming the larger contributor when over the limit."""
    needed = distill_bytes(n_users, n_items, cfg, teacher_dim)
    if needed > limit_bytes:
        student = _model_bytes(n_users, n_items, cfg.dim, cfg.student_model, cfg.n_layers)
        field = "dim" if student * 2 >= needed else f"{cfg.method}.top_l"
        if cfg.method == "rd" and field != "dim":
            field = "rd.top_k"
        raise MemoryBudgetError(
            field, needed, limit_bytes, f"distilling ({cfg.method}, student dim={cfg.dim}) over "
            f"{n_users:,} users x {n_items:,} items",
        )  # fmt: skip
    return needed
