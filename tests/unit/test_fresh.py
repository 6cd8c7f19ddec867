"""FreshItems: the per-user recent-items map is bounded in users, items per user and age."""

from __future__ import annotations

from service.serving.fresh import FreshItems


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_items_come_back_oldest_first_without_repeats() -> None:
    fresh = FreshItems(max_users=10, per_user=5, ttl_s=60, clock=Clock())
    for item in ("a", "b", "a", "c"):
        fresh.add("u", item, 1000.0)
    assert list(fresh.items("u")) == ["b", "a", "c"]  # a repeat moves to the newest end
    assert list(fresh.items("nobody")) == []


def test_at_most_per_user_items_the_oldest_dropped() -> None:
    fresh = FreshItems(max_users=10, per_user=3, ttl_s=60, clock=Clock())
    for i in range(7):
        fresh.add("u", f"i{i}", 1000.0)
    assert list(fresh.items("u")) == ["i4", "i5", "i6"]


def test_at_most_max_users_the_least_recently_active_dropped() -> None:
    fresh = FreshItems(max_users=3, per_user=3, ttl_s=60, clock=Clock())
    for u in ("u0", "u1", "u2"):
        fresh.add(u, "x", 1000.0)
    fresh.add("u0", "y", 1000.0)  # u0 active again: u1 is now the least recent
    fresh.add("u3", "x", 1000.0)
    assert len(fresh) == 3
    assert list(fresh.items("u1")) == []
    assert [list(fresh.items(u)) for u in ("u0", "u2", "u3")] == [["x", "y"], ["x"], ["x"]]


def test_items_expire_ttl_after_they_were_stored() -> None:
    clock = Clock()
    fresh = FreshItems(max_users=10, per_user=5, ttl_s=60, clock=clock)
    fresh.add("u", "old", 950.0)  # expires at 1010
    fresh.add("u", "new", 1000.0)  # expires at 1060
    fresh.add("u", "gone", 900.0)  # expired already: never held
    assert list(fresh.items("u")) == ["old", "new"]
    clock.t = 1010.0
    assert list(fresh.items("u")) == ["new"]
    clock.t = 1060.0
    assert list(fresh.items("u")) == []
    assert fresh.applied == 2


def test_a_stream_entry_parses_back_into_its_event() -> None:
    """The entry format the intake writes and other readers (outcome attribution) parse."""
    from service.core.events import EVENT_FIELDS, parse_entry

    fields = dict(zip(EVENT_FIELDS, ["e-1", "u1", "i3", "click", "1767225600.5", ""], strict=True))
    stored = parse_entry("1767225601234-0", fields)
    assert stored.stored_at == 1767225601.234
    assert (stored.event.user_id, stored.event.item_id, stored.event.type) == ("u1", "i3", "click")
    assert stored.event.ts == 1767225600.5 and stored.event.rec_id == ""
