"""Comparing recommendation answers: each answer carries its own rec_id, so two answers of
the same lists differ in it and nothing else."""

from __future__ import annotations

from typing import Any


def same_answer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two answers list the same thing (each answer has its own rec_id)."""
    return {k: v for k, v in a.items() if k != "rec_id"} == {
        k: v for k, v in b.items() if k != "rec_id"
    }
