"""Schema-driven fuzzing of the whole API from its own OpenAPI document (schemathesis).

Every operation gets schema-conforming (positive) and schema-violating (negative) requests,
a bounded number of each, derandomised so a run is reproducible, sent over loopback to
create_app under uvicorn with a real Redis and a published model. No answer may be a 5xx,
and every 4xx must be FastAPI's {"detail": ...} naming what was wrong: a validation list
whose entries carry a `loc`, or a message that names a parameter, field or header.

No worker consumes the job queues here, so fuzzed job parameters are only validated and
queued, never trained.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

from service.core.config import Settings
from service.core.registry import Registry
from tests.reliability.conftest import observe, publish_direct, seed_dataset, seed_model
from tests.support.live_api import LiveAPI

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

EXAMPLES_PER_MODE = 50
# Operations whose valid requests do real work (generate data, render pages): fewer examples.
HEAVY = {("POST", "/v1/datasets"): 6}
# Names a 4xx detail may use for things that are not declared parameters.
GENERIC_NAMES = ("body", "Content-Type", "Authorization", "file", "user_id", "model")


def _names(operation: Any) -> set[str]:
    """Parameter and (nested) body property names of one operation."""
    names: set[str] = set(GENERIC_NAMES)
    for param in operation.definition.raw.get("parameters", []):
        names.add(param["name"])

    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            for key, sub in schema.get("properties", {}).items():
                names.add(key)
                walk(sub)
            for value in schema.values():
                walk(value)
        elif isinstance(schema, list):
            for item in schema:
                walk(item)

    walk(operation.definition.raw.get("requestBody", {}))
    walk(operation.schema.raw_schema.get("components", {}))
    return names


def _problem(response: requests.Response, names: set[str]) -> str | None:
    """Why this answer breaks the contract, or None."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]}"
    if not 400 <= response.status_code < 500:
        return None
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} without a JSON detail: {response.text[:200]}"
    if isinstance(detail, list):
        if not detail or not all(isinstance(e, dict) and e.get("loc") for e in detail):
            return f"{response.status_code} validation detail without loc: {detail!r:.300}"
        return None
    if isinstance(detail, str) and any(
        re.search(rf"(^|\W){re.escape(n)}(\W|$)", detail) for n in names
    ):
        return None
    return f"{response.status_code} detail names no field: {detail!r:.300}"


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    statuses: Counter[int],
    problems: list[str],
) -> None:
    """Send one operation's generated requests; count statuses, collect contract breaks."""
    names = _names(operation)
    key = (operation.method.upper(), operation.path)

    @hypothesis.settings(
        max_examples=HEAVY.get(key, EXAMPLES_PER_MODE),
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, timeout=30)
        statuses[response.status_code] += 1
        problem = _problem(response, names)
        if problem:  # collected, not raised: no shrinking, one report of everything
            problems.append(f"{case.method} {case.formatted_path} [{mode.value}] -> {problem}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing to get wrong: e.g. no negative request exists for GET /healthz


def test_fuzz_every_operation_no_5xx_and_4xx_name_the_field(
    make_settings: Callable[..., Settings],
    live_api: Callable[..., LiveAPI],
) -> None:
    settings = make_settings()
    registry = Registry.from_url(settings.redis_url or "")
    dataset = seed_dataset(settings, registry)
    seed_model(settings, registry, dataset, "student-fuzz")
    publish_direct(settings, registry, dataset, "student-fuzz")
    registry.close()
    api = live_api(settings)
    schema = schemathesis.openapi.from_dict(
        requests.get(f"{api.url}/openapi.json", timeout=30).json()
    )
    session = requests.Session()
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    operations = 0
    fuzzed: set[tuple[str, str]] = set()
    t0 = time.monotonic()

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        fuzzed.add((operation.method.upper(), operation.path))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, api.url, session, statuses, problems)

    session.close()
    observe(
        "fuzz_openapi",
        attack=f"schemathesis, {EXAMPLES_PER_MODE} positive + {EXAMPLES_PER_MODE} "
        "negative examples per operation",
        operations=operations,
        requests=sum(statuses.values()),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_errors=sum(v for k, v in statuses.items() if k >= 500),
        contract_violations=len(problems),
        seconds=round(time.monotonic() - t0, 1),
    )
    assert problems == [], "\n".join(problems[:30])
    assert ("POST", "/v1/events") in fuzzed  # issue 18: the event intake is fuzzed too
    assert operations >= 15 and sum(statuses.values()) > operations * EXAMPLES_PER_MODE
