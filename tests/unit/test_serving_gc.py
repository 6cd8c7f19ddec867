"""The serving process's GC policy: a bundle that was used and then dropped is freed by
reference counting alone (no cycle), so freezing the collector after a swap leaks nothing;
and freeze_long_lived moves what is alive into the permanent generation."""

from __future__ import annotations

import gc
import weakref
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bundle_fixtures import make_bundle

from service.serving.bundle import load_bundle
from service.serving.exposure.counter import Tally
from service.serving.gc_policy import arm_warm_freeze, freeze_long_lived, note_answer


@pytest.fixture()
def collector_off() -> Iterator[None]:
    """The cyclic collector off: only reference counting frees objects in the test body."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _use_every_path(bundle: object) -> None:
    """Touch what a serving bundle builds lazily or runs on its search thread."""
    b = bundle
    assert b.recommend_one(0, 5, True)[1].shape == (5,)  # type: ignore[attr-defined]  # starts the search thread
    b.fallback("debiased", 5, np.zeros(0, np.int64), None)  # type: ignore[attr-defined]
    b.fold_in(np.array([1, 2, 3]))  # type: ignore[attr-defined]
    assert b._cosine[0].shape[0] == b.n_items  # type: ignore[attr-defined]  # built on first use


def test_a_used_bundle_is_freed_by_reference_counting(tmp_path: Path, collector_off: None) -> None:
    path, _, _ = make_bundle(tmp_path)
    bundle = load_bundle(path)
    _use_every_path(bundle)
    coalescer = (
        bundle._coalescer
    )  # its search thread may still be alive (idle_s): it must not pin the bundle
    ref = weakref.ref(bundle)
    del bundle
    assert ref() is None, "a dropped bundle survived: it is part of a reference cycle"
    assert coalescer._batch_ref() is None  # the weak reference died with it


def test_freeze_moves_live_objects_to_the_permanent_generation() -> None:
    marker = [object() for _ in range(10)]  # tracked containers alive now
    before = gc.get_freeze_count()
    try:
        freeze_long_lived("test")
        assert gc.get_freeze_count() >= before + len(marker)
    finally:
        gc.unfreeze()


def test_the_warm_up_freeze_comes_after_the_armed_number_of_answers() -> None:
    """What the first answers make is frozen once, after `answers` answers, and not again."""
    gc.collect()
    try:
        arm_warm_freeze(3)
        note_answer()
        note_answer()
        made_by_requests = [[] for _ in range(50)]  # tracked containers made after the load
        before = gc.get_freeze_count()
        assert gc.is_tracked(made_by_requests[0])
        note_answer()  # the third answer: freeze
        frozen = gc.get_freeze_count()
        assert frozen >= before + len(made_by_requests)
        later = [[] for _ in range(50)]
        for _ in range(10):
            note_answer()
        assert gc.get_freeze_count() == frozen, "froze again without a new load"
        assert later
    finally:
        arm_warm_freeze(0)
        gc.unfreeze()


def test_a_counting_tallys_item_texts_leave_the_collectors_walks(tmp_path: Path) -> None:
    """Made with the tally (before the load's freeze), as objects the collector stops
    tracking: made later as lists, they were walked by every full pass (n_items each)."""
    path, _, _ = make_bundle(tmp_path)
    bundle = load_bundle(path)
    tally = Tally(bundle, "since", deque())
    gc.collect()
    head, ids, groups = tally.rec_parts()
    assert len(ids) == len(groups) == bundle.n_items
    assert not gc.is_tracked(ids) and not gc.is_tracked(groups)
    assert tally.rec_parts()[1] is ids  # made once
