"""The serving unit: one model a request may be answered by, with where its answers count.

The IndexStore's swap installs one for the active model and one per experiment arm
(service/serving/index_store.py); the routes pick one per request (service/serving/answers.py,
service/serving/experiment.py), search its bundle and count the answer on its tally; the
exposure reader reports per served model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.serving.bundle import ServingBundle
from service.serving.exposure.counter import Tally


@dataclass(frozen=True)
class ServedModel:
    """One model a request may be answered by, as installed by the IndexStore's swap.

    Attributes:
        bundle: the loaded bundle that searches.
        role: "active" (the published pointer) or "arm" (of the running experiment).
        weight: the arm's share of users; None for the active model.
        tally: where its answers are counted (its epoch key even when counting is off).
    """

    bundle: ServingBundle
    role: Literal["active", "arm"]
    weight: float | None
    tally: Tally

    @property
    def model_id(self) -> str:
        return self.bundle.model_id
