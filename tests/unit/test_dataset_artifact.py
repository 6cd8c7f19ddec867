"""The dataset artifact: save -> load keeps arrays, ids, truth and fingerprint; tampered
content is detected; the manifest carries the statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.dataset import Dataset
from training.errors import DataError


def test_round_trip_keeps_everything(tiny_dataset, tmp_path: Path):
    out = tiny_dataset.save(tmp_path / "ds")
    back = Dataset.load(out)
    assert back.fingerprint == tiny_dataset.fingerprint
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(back.split(name), tiny_dataset.split(name))
    np.testing.assert_array_equal(back.user_ids, tiny_dataset.user_ids)
    np.testing.assert_array_equal(back.item_ids, tiny_dataset.item_ids)
    np.testing.assert_array_equal(back.truth.item_factors, tiny_dataset.truth.item_factors)
    assert back.info == json.loads(json.dumps(tiny_dataset.info))


def test_manifest_statistics(tiny_dataset, tmp_path: Path):
    tiny_dataset.save(tmp_path / "ds")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    stats = manifest["statistics"]
    assert manifest["fingerprint"] == tiny_dataset.fingerprint and manifest["has_truth"]
    assert stats["train"] == len(tiny_dataset.train) and stats["users"] == tiny_dataset.n_users
    assert sum(g["train_interactions"] for g in stats["popularity_groups"]) == len(
        tiny_dataset.train
    )


def test_tampered_arrays_are_detected(tiny_dataset, tmp_path: Path):
    out = tiny_dataset.save(tmp_path / "ds")
    with np.load(out / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train"] = arrays["train"].copy()
    arrays["train"][0, 1] = (arrays["train"][0, 1] + 1) % tiny_dataset.n_items
    np.savez(out / "arrays.npz", **arrays)
    with pytest.raises(DataError, match="fingerprint"):
        Dataset.load(out)


def test_saving_again_replaces_the_old_copy(tiny_dataset, tmp_path: Path):
    other = Dataset("other", ["a", "b"], ["x", "y"], [[0, 0]], [], [[1, 1]])
    other.save(tmp_path / "ds")
    tiny_dataset.save(tmp_path / "ds")
    assert Dataset.load(tmp_path / "ds").fingerprint == tiny_dataset.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp dirs left


def test_not_an_artifact(tmp_path: Path):
    with pytest.raises(DataError, match="not a dataset artifact"):
        Dataset.load(tmp_path)
