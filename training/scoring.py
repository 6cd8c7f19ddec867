"""The teacher contract: a teacher is anything that scores a block of users against every item.

    class TeacherScorer(Protocol):
        n_users: int; n_items: int; device: torch.device
        def score(self, users: (n,) int64) -> (n, n_items) float32 on `device`

Distillers, the teacher's own evaluation and a student's overlap with its teacher use a
teacher only through `score`, one block of users at a time, so memory stays
O(block · n_items) and any teacher can be distilled. Two implementations cover every
teacher of the project:

    EmbeddingScorer   user_emb[u] @ item_emb.T          mf, lightgcn, als (and every student)
    ItemItemScorer    X[u] @ B  (X: training rows)      ease

Students stay embeddings: they are what gets served.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["CPU", "EmbeddingScorer", "ItemItemScorer", "TeacherScorer"]

CPU = torch.device("cpu")


@runtime_checkable
class TeacherScorer(Protocol):
    """Scores a block of users against all items (the only way a teacher is used)."""

    @property
    def n_users(self) -> int: ...

    @property
    def n_items(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of `users` against every item.

        Args:
            users: (n,) int64 user ids, on any device.
        Returns:
            (n, n_items) float32 on `self.device`, higher is better: a new tensor the
            caller may modify (top-k masks excluded items in place).
        """
        ...


def _as_f32(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(device=device, dtype=torch.float32)


class EmbeddingScorer:
    """score(u) = user_emb[u] @ item_emb.T.

    The item table moves to `device` once; user rows move one block at a time, so a large
    user table never has to fit on the device.

    Args:
        user_emb: (n_users, d) numpy or torch, cast to float32.
        item_emb: (n_items, d) numpy or torch, cast to float32.
    Raises:
        ValueError: item_emb holds NaN or inf (user rows are checked per block in `score`).
    """

    def __init__(
        self,
        user_emb: np.ndarray | torch.Tensor,
        item_emb: np.ndarray | torch.Tensor,
        device: torch.device = CPU,
    ) -> None:
        if user_emb.shape[1] != item_emb.shape[1]:
            raise ValueError(f"user_emb d={user_emb.shape[1]} != item_emb d={item_emb.shape[1]}")
        self._device = device
        self.user_emb = user_emb
        self.item_emb = _as_f32(item_emb, device)  # (n_items, d)
        if not bool(torch.isfinite(self.item_emb).all()):
            raise ValueError("item_emb holds NaN or inf")

    @property
    def n_users(self) -> int:
        return int(self.user_emb.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_emb.shape[0])

    @property
    def device(self) -> torch.device:
        return self._device

    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """(n, d) float32 rows of `users` on the device; ValueError naming them on NaN/inf."""
        if isinstance(self.user_emb, torch.Tensor):
            rows = self.user_emb.detach()[users.to(self.user_emb.device)]
        else:
            rows = torch.from_numpy(np.ascontiguousarray(self.user_emb[users.cpu().numpy()]))
        rows = rows.to(device=self._device, dtype=torch.float32)
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(
                f"user_emb holds NaN or inf in users {int(users[0])}..{int(users[-1])}"
            )
        return rows

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """(n,) int64 users -> (n, n_items) float32 on the device."""
        return self.user_rows(users) @ self.item_emb.T


class ItemItemScorer:
    """score(u) = X[u] @ B: an item-to-item model (EASE) over the user's training items.

    Args:
        history: (n_users, n_items) CSR of the interactions the model scores from (the
            training split it was fitted on); values are used as given (binary here).
        weights: (n_items, n_items) B, numpy or torch, cast to float32 on `device`.
    """

    def __init__(
        self, history: sp.csr_matrix, weights: np.ndarray | torch.Tensor, device: torch.device = CPU
    ) -> None:
        if weights.shape != (history.shape[1], history.shape[1]):
            raise ValueError(
                f"weights shape {tuple(weights.shape)}: need (n_items, n_items) with "
                f"n_items={history.shape[1]}"
            )
        self._device = device
        self.history = sp.csr_matrix(history, dtype=np.float32)
        self.weights = _as_f32(weights, device)  # (n_items, n_items)

    @property
    def n_users(self) -> int:
        return int(self.history.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.history.shape[1])

    @property
    def device(self) -> torch.device:
        return self._device

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """(n,) int64 users -> (n, n_items) float32 on the device (sparse rows @ dense B)."""
        sub = self.history[users.cpu().numpy()].tocoo()  # (n, n_items), a few items per row
        idx = torch.from_numpy(np.vstack([sub.row, sub.col]).astype(np.int64))
        x = torch.sparse_coo_tensor(
            idx, torch.from_numpy(sub.data), sub.shape, check_invariants=False
        ).to(self._device)
        return torch.sparse.mm(x, self.weights)
