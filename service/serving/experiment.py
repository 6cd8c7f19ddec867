"""A/B experiments: several models served at once, each user sticky to one arm.

`PUT /v1/serving/experiment` (service/api/routes/experiment.py) stores an `Experiment` (arms
with weights, a salt, who started it and when) at keys.EXPERIMENT. Every API process's
IndexStore watcher loads all the arms' bundles and installs them with the active model in
one immutable state (service/serving/index_store.py), so every process serves the same split
and a request reads one snapshot from start to end.

Assignment is a pure function of (salt, user id), so a user keeps their arm across
requests, processes and restarts, and an analysis job can recompute it:

    u   = int.from_bytes(blake2b(salt_utf8 + b"\\x00" + user_id_utf8, digest_size=8), "big") / 2**64
    arm = the first arm whose cumulative weight (in the order given) exceeds u

Python's hash() is salted per process and would scatter a user over the arms. A user's u
does not depend on the weights, so raising an arm's weight only moves users into it (those
of the arm that follows it in the list), and a new salt reshuffles everyone.

What each route serves during an experiment:
- GET /v1/recommendations/{user} and the batch POST: each user from their arm (the batch
  groups its users by arm: one search per arm; each result names its model, and the
  top-level model_id is null when arms differ).
- by-history and similar items: the active model. A visitor without an id has nothing to be
  sticky on, and item-to-item lists are not what the experiment compares.
- `?model=X` (`"model"` in a body), on every route: answer from X when X is served, the
  active model or an arm, whatever the user's arm; 409 otherwise. Answers are counted under
  the model that produced them, so live exposure stays per model.
Arms should share the dataset: a user unknown to their arm's model is answered as unknown
(404, or the fallback asked for).
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from itertools import accumulate

from service.core.records import Experiment
from service.serving.served_model import ServedModel


def assignment_point(salt: str, user_id: str) -> float:
    """The user's point u in [0, 1): the first 8 bytes of BLAKE2b(salt, 0x00, user id) / 2^64."""
    digest = hashlib.blake2b(salt.encode() + b"\x00" + user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def cumulative_weights(weights: list[float]) -> tuple[float, ...]:
    """Running sums of the weights, the last set to exactly 1 (weights sum to 1 within 1e-6)."""
    cum = list(accumulate(weights))
    cum[-1] = 1.0
    return tuple(cum)


def pick_arm(u: float, cumulative: tuple[float, ...]) -> int:
    """Index of the first arm whose cumulative weight exceeds u in [0, 1)."""
    return min(bisect.bisect_right(cumulative, u), len(cumulative) - 1)


@dataclass(frozen=True)
class LoadedExperiment:
    """An experiment with its arms loaded: what a request picks its model from.

    Attributes:
        spec: the stored experiment.
        raw: the JSON it was stored as (the watcher reloads when keys.EXPERIMENT differs).
        arms: one ServedModel per arm, in the spec's order.
        cumulative: cumulative_weights of the arms.
    """

    spec: Experiment
    raw: str
    arms: tuple[ServedModel, ...]
    cumulative: tuple[float, ...]

    def arm_for(self, user_id: str) -> ServedModel:
        """The arm that serves `user_id` (a few µs: one BLAKE2b and a bisect)."""
        return self.arms[pick_arm(assignment_point(self.spec.salt, user_id), self.cumulative)]

    def arm_named(self, model_id: str) -> ServedModel | None:
        for arm in self.arms:
            if arm.model_id == model_id:
                return arm
        return None
