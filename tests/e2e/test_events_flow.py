"""Events end to end, through a real Redis, a real Celery worker process and the FAISS bundle it
publishes: teacher -> distill -> publish, then POST /v1/events and what it changes:

(a) a known user's clicked item leaves their next answer (the fresh filter);
(b) a user the model does not know, with clicks, is answered from them ("source": "history",
    the GET and the batch alike);
(c) clicks and purchases that cite an answer's rec_id are counted in GET /v1/serving/outcomes
    under the served model, by position and popularity group, as the test sent them.

Only the data-dir layout (one data directory, the API in this process): events and outcomes
travel through Redis alone, which the s3 layout shares the same way. Tiny data, dim 8 and a
few epochs keep it well under a minute on two cores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import E2EStack
from tests.e2e.test_service_flow import run_to_end, tiny_interactions
from tests.support.polling import wait_until
from training.dataset import Dataset

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

K = 5
POSITION_BUCKETS = (("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4-5", 4, 5), ("6-10", 6, 10))


def bucket_of(position: int) -> str:
    return next(name for name, lo, hi in POSITION_BUCKETS if lo <= position <= hi)


def poll(check: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    return wait_until(check, timeout_s, what, interval_s=0.05)


class Answers:
    """Every list the served model showed during the test, as the API returned them."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.lists: list[dict[str, Any]] = []

    def get(self, user: str) -> dict[str, Any]:
        body = self.try_get(user)
        assert body is not None, f"{user}: 404"
        return body

    def try_get(self, user: str) -> dict[str, Any] | None:
        """The user's answer, or None for a 404 (which shows nothing)."""
        r = self.api.get(f"/v1/recommendations/{user}", params={"k": K})
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        self.lists.append(body)
        return body

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        r = self.api.post(path, json=payload)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def by_history(self, items: list[str]) -> dict[str, Any]:
        body = self._post("/v1/recommendations/by-history", {"items": items, "k": K})
        self.lists.append(body)
        return body

    def batch(self, users: list[str]) -> dict[str, Any]:
        body = self._post("/v1/recommendations", {"user_ids": users, "k": K})
        self.lists += body["results"]
        return body


def send(api: httpx.Client, *events: dict[str, str]) -> None:
    r = api.post("/v1/events", json={"events": list(events)})
    assert r.status_code == 202 and r.json()["stored"] == len(events), r.text


def ids(body: dict[str, Any]) -> list[str]:
    return [it["item_id"] for it in body["items"]]


@pytest.mark.parametrize("e2e", ["data-dir"], indirect=True)
def test_events_reach_answers_and_outcomes(e2e: E2EStack) -> None:
    api = e2e.api
    r = api.post(
        "/v1/datasets",
        files={"file": ("tiny.csv", tiny_interactions())},
        data={"split": "random", "seed": "1"},
    )
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    common = {"dim": 8, "batch_size": 256}
    teacher, _ = run_to_end(
        api,
        {"kind": "teacher", "model": "mf", "dataset_id": dataset_id, "epochs": 8, **common},
    )
    assert teacher["status"] == "succeeded", teacher
    student, _ = run_to_end(
        api,
        {
            "kind": "distill",
            "teacher_id": teacher["model_id"],
            "method": "unkd",
            "epochs": 2,
            "publish": True,
            "force": True,  # 2 epochs: the gate may refuse so undertrained a student
            "unkd": {"pairs_per_user": 8, "top_l": 50},
            **common,
        },
    )
    assert student["status"] == "succeeded", student
    student_id = student["model_id"]
    poll(lambda: api.get("/v1/serving").json().get("model_id") == student_id, "the publish")

    dataset = Dataset.load(e2e.store.resolve(e2e.registry.get_dataset(dataset_id).path))
    train = dataset.csr("train")
    answers = Answers(api)

    # (a) a known user's clicked item leaves their next answer; the rest keeps its order
    user = str(dataset.user_ids[3])
    before = answers.get(user)
    assert before["source"] == "model" and before["model_id"] == student_id
    clicked = ids(before)[1]
    send(api, {"user_id": user, "item_id": clicked, "type": "click"})
    after = poll(lambda: clicked not in ids(b := answers.get(user)) and b, "the click to apply")
    assert ids(after)[: K - 1] == [i for i in ids(before) if i != clicked]
    seen = set(dataset.item_ids[train.indices[train.indptr[3] : train.indptr[4]]])
    assert not set(ids(after)) & seen and len(ids(after)) == K

    # (b) an unknown user with clicks is answered from them
    assert api.get("/v1/recommendations/visitor-1").status_code == 404
    history = [str(i) for i in dataset.item_ids[[0, 7, 19]]]
    send(api, *({"user_id": "visitor-1", "item_id": i, "type": "click"} for i in history))
    visitor = poll(lambda: answers.try_get("visitor-1"), "the visitor's clicks to apply")
    assert visitor["source"] == "history" and visitor["user_id"] == "visitor-1"
    assert len(ids(visitor)) == K and not set(ids(visitor)) & set(history)
    assert ids(answers.by_history(history)) == ids(visitor)  # the same fold-in as by-history
    batch = answers.batch([user, "visitor-1"])
    assert [x["source"] for x in batch["results"]] == ["model", "history"]
    assert ids(batch["results"][1]) == ids(visitor)

    # (c) events citing rec_ids are attributed to the served model, by position and group
    other = str(dataset.user_ids[10])
    single = answers.get(other)
    cited: list[tuple[str, dict[str, Any], int, str]] = [  # (user, answer, position, type)
        (other, single, 1, "click"),
        (other, single, 3, "click"),
        (other, single, 1, "purchase"),
        (user, batch["results"][0], 2, "click"),
        ("visitor-1", batch["results"][1], 5, "click"),
    ]
    send(
        api,
        *(
            {
                "user_id": u,
                "item_id": ans["items"][p - 1]["item_id"],
                "type": t,
                "rec_id": ans["rec_id"],
            }
            for u, ans, p, t in cited
        ),
    )
    clicks = [(ans, p) for _, ans, p, t in cited if t == "click"]
    by_position = Counter(bucket_of(p) for _, p in clicks)
    by_group = Counter(ans["items"][p - 1]["group"] for ans, p in clicks)
    exposures = sum(len(a["items"]) for a in answers.lists)

    def counted() -> dict[str, Any] | None:
        body = api.get("/v1/serving/outcomes").json()
        models = {m["model_id"]: m for m in body["models"]}
        scope = models.get(student_id, {}).get("since_publish", {})
        done = (scope.get("clicks"), scope.get("purchases"), scope.get("requests"))
        return body if done == (len(clicks), 1, len(answers.lists)) else None

    body = poll(counted, "the cited events to be counted")
    (model,) = body["models"]
    assert (model["model_id"], model["role"]) == (student_id, "active")
    for span in ("since_publish", "window"):
        scope = model[span]
        assert (scope["clicks"], scope["purchases"], scope["views"]) == (len(clicks), 1, 0)
        assert (scope["requests"], scope["exposures"]) == (len(answers.lists), exposures)
        assert {p: n for p, n in scope["clicks_by_position"].items() if n} == dict(by_position)
        assert {g["group"]: g["clicks"] for g in scope["groups"] if g["clicks"]} == dict(by_group)
    # the clicks of (a) and (b) cited no answer
    assert body["unattributed"]["total"] == {"no_rec_id": 1 + len(history)}
