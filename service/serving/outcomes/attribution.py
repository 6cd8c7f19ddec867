"""Attribution, pure logic: what one answer showed (its rec record), and which counters an
event citing it increments (no Redis).

A rec record is a Redis hash per rec_id (keys.rec_record): one field per list of the answer,
named by the user it was for ("" for a history, which has no user id), whose value is the
JSON {"o": the outcome epoch of the model that answered (keys.outcomes_epoch: it names the
model), "i": the item ids shown, best first, "g": their popularity groups}. A single-user answer holds one list, a
batch one per user.

An event (the stream entry: event_id, user_id, item_id, type, ts, rec_id) is attributed when
its rec_id names a record, the record has a list for the event's user (or only one list: a
history's visitor, or a client that reports another id), and the item is in that list. It
then counts, under the list's model and epoch, `<type>`, `<type>:g:<group>`,
`<type>:p:<position bucket>` (positions from 1, best first) and the pair
`<type>:g:<group>:p:<position bucket>`. Anything else is unattributed,
by reason: `no_rec_id`, `unknown_rec_id` (no record: never answered, expired after an hour, or
still unflushed after the consumer's wait), `item_not_shown`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Literal

import numpy as np

# Positions 1..k grouped so that the counters stay few whatever k is.
POSITION_BUCKETS = ("1", "2", "3", "4-5", "6-10", "11-20", "21+")
_POSITION_EDGES = (1, 2, 3, 5, 10, 20)  # upper ends of the buckets but the last
# Event types are counted under their own name when they look like a name, else as "other":
# a client cannot grow a hash without bound.
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,23}")
Reason = Literal["no_rec_id", "unknown_rec_id", "item_not_shown"]
REASONS: tuple[Reason, ...] = ("no_rec_id", "unknown_rec_id", "item_not_shown")


def position_bucket(position: int) -> str:
    """The bucket of a 1-based position."""
    for label, top in zip(POSITION_BUCKETS, _POSITION_EDGES, strict=False):
        if position <= top:
            return label
    return POSITION_BUCKETS[-1]


def event_type(raw: str) -> str:
    return raw if _TYPE.fullmatch(raw) else "other"


def rec_head(outcome_key: str) -> str:
    """The JSON text every list of one model's records begins with."""
    return f'{{"o":{encode_basestring_ascii(outcome_key)}'


def rec_texts(item_ids: Sequence[str], groups: Sequence[int]) -> tuple[list[str], list[str]]:
    """Each item's id as JSON text and its group as text, made once per served model: joining
    them costs the flusher ~2 us per answer at k = 20, against ~12 for numpy indexing and
    json.dumps per answer (~60 bytes an item)."""
    digits = [str(g) for g in range(max(groups, default=0) + 1)]
    return [encode_basestring_ascii(i) for i in item_ids], [digits[g] for g in groups]


def rec_lists(
    head: str,
    id_texts: Sequence[str],
    group_texts: Sequence[str],
    items: np.ndarray,
    users: Sequence[str | None],
) -> dict[str, str]:
    """The fields of a rec record for the lists of one model in one answer.

    Args:
        head: rec_head of the model that answered.
        id_texts, group_texts: (n_items,) rec_texts of its items.
        items: (k,) for one list or (n, k) for n lists, int64 item indices, -1 empty slots.
        users: the user of each list (None: a history).
    """
    rows = [items.tolist()] if items.ndim == 1 else items.tolist()
    out: dict[str, str] = {}
    for user, row in zip(users, rows, strict=True):
        shown = [i for i in row if i >= 0]
        ids = ",".join([id_texts[i] for i in shown])
        kinds = ",".join([group_texts[i] for i in shown])
        out.setdefault("" if user is None else user, f'{head},"i":[{ids}],"g":[{kinds}]}}')
    return out


@dataclass(frozen=True)
class Attributed:
    """An event explained by an answer: the counters to add under `outcome_key`."""

    outcome_key: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Unattributed:
    reason: Reason


def attribute(
    event: Mapping[str, str], record: Mapping[str, str] | None
) -> Attributed | Unattributed:
    """What an event counts for, given the record of its rec_id (None: no record found).

    An event without a rec_id is `no_rec_id` whatever `record` is; the caller decides how
    long a missing record is waited for before it is `unknown_rec_id`.
    """
    if not event.get("rec_id"):
        return Unattributed("no_rec_id")
    if not record:
        return Unattributed("unknown_rec_id")
    raw = record.get(event.get("user_id", ""))
    if raw is None:
        if len(record) != 1:
            return Unattributed("item_not_shown")
        raw = next(iter(record.values()))
    shown = json.loads(raw)
    try:
        position = shown["i"].index(event.get("item_id"))
    except ValueError:
        return Unattributed("item_not_shown")
    kind = event_type(event.get("type", ""))
    group = shown["g"][position]
    place = position_bucket(position + 1)
    fields = (kind, f"{kind}:g:{group}", f"{kind}:p:{place}", f"{kind}:g:{group}:p:{place}")
    return Attributed(shown["o"], fields)
