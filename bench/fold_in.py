"""Fold-in quality: how good is a user vector folded in from a history, against a trained one?

On MovieLens-100K (../shared/datasets/ml-100k/ml-100k.inter; skipped with a message when it
is absent), through the project's own training API:

  1. warm: an MF student (BPR, dim 10; training.pipelines.train_teacher with model "mf")
     trained on every user's training split. Each user's training items are folded in with
     the served fold-in (service.serving.foldin) for a range of lambda, and NDCG@20 on the
     test split of the folded vectors is printed next to the trained vectors'.
  2. cold: the same student trained without 20 % of the users (their interactions removed),
     so those users are new to it; their training items are folded in, and their test
     NDCG@20 is compared with the warm model's trained vectors for the same users and
     with the most-popular list.

Everything ranks through training.evaluation (full catalogue, train + valid excluded, the
project's tie rule).

    python bench/fold_in.py [--epochs 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment, shared_datasets, table  # noqa: E402

LAMBDAS = (0.1, 1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 1e4, 1e6)  # in units of mean ||q_i||^2
COLD_SHARE = 0.2
K = 20


def fold_all(
    item_emb: np.ndarray, train: Any, users: np.ndarray, lam_rel: float, base: np.ndarray
) -> np.ndarray:
    """`base` with the rows of `users` replaced by their folded-in training histories."""
    from service.serving.foldin import fold_in, mean_sq_norm

    lam = lam_rel * mean_sq_norm(item_emb)
    out = np.array(base, dtype=np.float32, copy=True)
    for u in users.tolist():
        hist = train.indices[train.indptr[u] : train.indptr[u + 1]]
        if len(hist):
            out[u] = fold_in(item_emb, hist, lam)
    return out


def ndcg(dataset: Any, user_emb: np.ndarray, item_emb: np.ndarray) -> float:
    from training.evaluation import evaluate_embeddings

    return float(evaluate_embeddings(dataset, user_emb, item_emb)["metrics"][f"ndcg@{K}"])


def train_mf(dataset: Any, out: Path, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from training.config import TeacherConfig
    from training.pipelines import train_teacher

    cfg = TeacherConfig(model="mf", dim=10, epochs=epochs, eval_every=5, patience=3, seed=0)
    art = train_teacher(dataset, cfg, out, device=torch.device("cpu"))
    user_emb, item_emb = art.embeddings()
    return np.asarray(user_emb, dtype=np.float32), np.asarray(item_emb, dtype=np.float32)


def restricted(dataset: Any, keep_users: np.ndarray, splits: tuple[str, ...]) -> Any:
    """The dataset with the rows of `splits` kept only for `keep_users` (same ids)."""
    from training.dataset import Dataset

    mask = np.zeros(dataset.n_users, dtype=bool)
    mask[keep_users] = True
    arrays = {name: getattr(dataset, name) for name in ("train", "valid", "test")}
    for name in splits:
        arrays[name] = arrays[name][mask[arrays[name][:, 0]]]
    return Dataset(
        name=f"{dataset.name}-subset",
        user_ids=dataset.user_ids,
        item_ids=dataset.item_ids,
        **arrays,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, default=60, help="upper bound; early stopping ends sooner"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    path = shared_datasets() / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        print(
            f"skipped: MovieLens-100K not found at {path} (set UNKD_SHARED_DATASETS to the folder holding ml-100k/)"
        )
        return 0
    import torch

    from training.evaluation import evaluate_topk, evaluated_users, most_popular_topk
    from training.prepare import prepare_dataset

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = prepare_dataset(path, seed=0)
    train = ds.csr("train")
    users = evaluated_users(ds, "test")
    with tempfile.TemporaryDirectory() as tmp:
        user_emb, item_emb = train_mf(ds, Path(tmp) / "warm", args.epochs)
        warm = {"trained": ndcg(ds, user_emb, item_emb)}
        for lam in LAMBDAS:
            warm[f"folded, lambda {lam:g}"] = ndcg(
                ds, fold_all(item_emb, train, users, lam, user_emb), item_emb
            )

        rng = np.random.default_rng(0)
        cold_users = np.sort(rng.choice(users, size=int(COLD_SHARE * len(users)), replace=False))
        others = np.setdiff1d(np.arange(ds.n_users), cold_users)
        _, cold_items = train_mf(
            restricted(ds, others, ("train", "valid", "test")), Path(tmp) / "cold", args.epochs
        )
    eval_cold = restricted(
        ds, cold_users, ("test",)
    )  # their test rows only; train+valid still excluded
    cold = {
        "trained (warm model, users seen in training)": ndcg(eval_cold, user_emb, item_emb),
        "most popular": float(
            evaluate_topk(eval_cold, most_popular_topk(eval_cold, cold_users, 50))["metrics"][
                f"ndcg@{K}"
            ]
        ),
    }
    blank = np.zeros_like(user_emb)
    for lam in LAMBDAS:
        cold[f"folded into the cold model, lambda {lam:g}"] = ndcg(
            eval_cold, fold_all(cold_items, train, cold_users, lam, blank), cold_items
        )
    elapsed = time.perf_counter() - t0

    print(
        f"MovieLens-100K: {ds.n_users} users x {ds.n_items} items, MF (BPR) dim 10; "
        f"{len(users)} test users, {len(cold_users)} of them held out of the cold model"
    )
    print(table(["warm: all test users", f"NDCG@{K}"], [[k, v] for k, v in warm.items()]))
    print()
    print(
        table(
            [f"cold: {len(cold_users)} new users", f"NDCG@{K}"], [[k, v] for k, v in cold.items()]
        )
    )
    print(f"\n{elapsed:.0f} s in all")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "warm": warm,
                    "cold": cold,
                    "lambdas": LAMBDAS,
                    "elapsed_s": elapsed,
                    "environment": environment(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
