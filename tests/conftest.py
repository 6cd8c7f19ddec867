"""Fixtures shared by every test: tiny synthetic data and the MovieLens-100K file, and
(tests/support/fixtures.py) the session's Redis, worker processes and the live API.

Importing them loads no FastAPI and no Celery; each suite's conftest adds its own settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.dataset import Dataset
from training.synthetic import generate_synthetic

pytest_plugins = ["tests.support.fixtures"]

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "n_users": 200,
    "n_items": 150,
    "dim": 8,
    "skew": 1.0,
    "interactions_per_user": 20,
    "seed": 0,
}


def shared_datasets_dir() -> Path:
    """UNKD_SHARED_DATASETS if set, else <repo>/../shared/datasets."""
    env = os.environ.get("UNKD_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    """200 users x 150 items, ~4k interactions, long-tailed, with truth. Do not mutate."""
    return generate_synthetic(**TINY, name="tiny")


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """The RecBole file ml-100k/ml-100k.inter; the test is skipped when it is absent."""
    root = shared_datasets_dir()
    path = root / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        how = (
            "set UNKD_SHARED_DATASETS"
            if "UNKD_SHARED_DATASETS" not in os.environ
            else "check UNKD_SHARED_DATASETS"
        )
        pytest.skip(f"MovieLens-100K not found at {path}: {how} to the folder holding ml-100k/")
    return path
