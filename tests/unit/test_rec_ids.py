"""Answer ids (service.serving.answers.new_rec_id): 12 hex digits, never repeated, and not
repeated by another API process either (`unkd api --workers N` forks or spawns them; outcomes
are attributed by rec_id across all of them)."""

from __future__ import annotations

import os
import re

from service.serving.answers import new_rec_id


def test_rec_ids_are_12_hex_digits_and_distinct() -> None:
    ids = [new_rec_id() for _ in range(20_000)]
    assert all(re.fullmatch("[0-9a-f]{12}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    """A generator copied by fork and not reseeded would hand both processes the same ids."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit at once
        try:
            os.write(write, ",".join(new_rec_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    child = b"".join(chunks).decode().split(",")
    parent = [new_rec_id() for _ in range(100)]
    assert len(child) == 100 and not set(child) & set(parent)
