"""ApiClient: the unkd REST API over httpx, one typed method per route the CLI uses.

Answers are the API's JSON bodies, typed as TypedDicts of the fields the CLI reads (the
server's pydantic models, service/api/schemas.py and service/serving/schemas.py, are the
reference; this module does not import them, so the client runs against any version that
keeps those fields). Every non-2xx answer raises ApiError with the status and the body's
`detail` flattened to one line; a server that cannot be reached raises ApiUnreachable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict, cast
from urllib.parse import quote

import httpx
from typing_extensions import NotRequired

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
USER_AGENT = "unkd-cli/0.1"


class JobProgress(TypedDict):
    stage: str
    epoch: int
    epochs: int
    message: str
    trial: int
    trials: int


class JobAccepted(TypedDict):
    id: str
    kind: str
    status: str
    status_url: str


class JobStatus(TypedDict):
    id: str
    kind: str
    status: str
    progress: JobProgress
    metrics: dict[str, float]
    error: str | None
    model_id: str | None
    timings: dict[str, Any]
    attempts: int
    cancel_requested: bool
    params: dict[str, Any]
    cap_met: NotRequired[bool | None]
    head_share_cap: NotRequired[dict[str, Any] | None]


class JobList(TypedDict):
    items: list[JobStatus]
    total: int
    limit: int
    offset: int


class Model(TypedDict):
    id: str
    kind: str
    method: str | None
    model: str
    dim: int
    lineage: dict[str, Any]
    metrics: dict[str, float]
    active: bool


class ModelList(TypedDict):
    items: list[Model]
    total: int
    limit: int
    offset: int


class RecommendedItem(TypedDict):
    item_id: str
    score: float
    group: int


class Recommendations(TypedDict, total=False):
    user_id: str | None
    model_id: str
    items: list[RecommendedItem]
    fallback: str | None
    unknown_items: dict[str, list[str]] | None


class ApiError(Exception):
    """The API answered with an error status; `detail` is its message on one line."""

    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.method, self.path = status, detail, method, path


class ApiUnreachable(Exception):
    """No HTTP answer at all: connection refused, DNS, timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the unkd API at {url} ({reason})")
        self.url, self.reason = url, reason


def detail_text(body: Any) -> str:
    """The `detail` of an error body on one line; a 422's list of field errors as
    `body.dim: <msg> (got 5000); ...`."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for err in detail:
            if not isinstance(err, dict):
                parts.append(str(err))
                continue
            loc = ".".join(str(x) for x in err.get("loc", ()))
            got = (
                f" (got {json.dumps(err['input'])[:80]})"
                if "input" in err and not isinstance(err["input"], dict)
                else ""
            )
            parts.append(
                f"{loc}: {err.get('msg', '')}{got}" if loc else f"{err.get('msg', '')}{got}"
            )
        detail = "; ".join(parts)
    elif not isinstance(detail, str):
        detail = json.dumps(detail)
    return " ".join(str(detail).split())  # one line, whatever the server put in it


class ApiClient:
    """A client of one unkd API.

    Args:
        base_url: the API's root, e.g. http://127.0.0.1:8000.
        key: an API key, sent as `Authorization: Bearer <key>`; None sends none.
        timeout_s: seconds to wait for each answer.
    """

    def __init__(self, base_url: str, key: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": USER_AGENT}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
    ) -> Any:
        try:
            r = self._http.request(method, path, params=params, json=json_body)
        except httpx.ConnectError as exc:
            reason = (
                "connection refused"
                if "refused" in str(exc).lower()
                else str(exc) or type(exc).__name__
            )
            raise ApiUnreachable(self.base_url, reason) from exc
        except httpx.TimeoutException as exc:
            raise ApiUnreachable(
                self.base_url, f"no answer within {self._http.timeout.read}s"
            ) from exc
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            raise ApiError(
                r.status_code,
                detail_text(body) if body is not None else r.text[:200].strip() or r.reason_phrase,
                method,
                path,
            )
        if body is None:
            raise ApiError(
                r.status_code,
                f"not a JSON answer (is {self.base_url} an unkd API?): {r.text[:100]!r}",
                method,
                path,
            )
        return body

    # -- jobs -----------------------------------------------------------------------------

    def submit_job(self, body: Mapping[str, Any]) -> JobAccepted:
        """POST /v1/jobs: a teacher or distill job (the body of TeacherJobRequest / DistillJobRequest)."""
        return cast(JobAccepted, self._request("POST", "/v1/jobs", json_body=dict(body)))

    def list_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JobList:
        params = {k: v for k, v in (("status", status), ("kind", kind)) if v is not None}
        return cast(
            JobList,
            self._request("GET", "/v1/jobs", params={**params, "limit": limit, "offset": offset}),
        )

    def get_job(self, job_id: str) -> JobStatus:
        return cast(JobStatus, self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}"))

    def cancel_job(self, job_id: str) -> JobStatus:
        """DELETE /v1/jobs/{id}: a queued job is cancelled now, a running one at its next epoch."""
        return cast(JobStatus, self._request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}"))

    def watch_job(self, job_id: str, *, interval_s: float = 0.5) -> Iterator[JobStatus]:
        """Poll GET /v1/jobs/{id} every `interval_s`, yielding each status; the last one
        yielded is terminal (succeeded, failed or cancelled)."""
        while True:
            status = self.get_job(job_id)
            yield status
            if status["status"] in TERMINAL:
                return
            time.sleep(interval_s)

    # -- models ---------------------------------------------------------------------------

    def list_models(self, *, limit: int = 50, offset: int = 0) -> ModelList:
        return cast(
            ModelList, self._request("GET", "/v1/models", params={"limit": limit, "offset": offset})
        )

    def publish_model(self, model_id: str, body: Mapping[str, Any] | None = None) -> JobAccepted:
        """POST /v1/models/{id}/publish (an admin key): 409 ApiError when the publish gate
        refuses; `{"force": true}` overrides it."""
        path = f"/v1/models/{quote(model_id, safe='')}/publish"
        return cast(
            JobAccepted, self._request("POST", path, json_body=dict(body) if body else None)
        )

    # -- serving --------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        *,
        k: int = 20,
        exclude_seen: bool = True,
        exclude: Sequence[str] = (),
        include: Sequence[str] = (),
        groups: Sequence[int] = (),
        fallback: str | None = None,
    ) -> Recommendations:
        """GET /v1/recommendations/{user}: the served model's top-k, with the filters."""
        params: dict[str, Any] = {"k": k, "exclude_seen": str(exclude_seen).lower()}
        for name, values in (("exclude", exclude), ("include", include), ("groups", groups)):
            if values:
                params[name] = list(values)
        if fallback is not None:
            params["fallback"] = fallback
        path = f"/v1/recommendations/{quote(user_id, safe='')}"
        return cast(Recommendations, self._request("GET", path, params=params))

    # -- events ---------------------------------------------------------------------------

    def post_events(self, events: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """POST /v1/events (a write key): {"received", "stored", "duplicates"} of the batch."""
        return cast(
            "dict[str, int]",
            self._request("POST", "/v1/events", json_body={"events": [dict(e) for e in events]}),
        )

    # -- pipelines ------------------------------------------------------------------------

    def put_pipeline(self, name: str, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """PUT /v1/pipelines/{name} (an admin key): create or replace the recipe."""
        path = f"/v1/pipelines/{quote(name, safe='')}"
        return cast("dict[str, Any]", self._request("PUT", path, json_body=dict(recipe)))

    def pipeline(self, name: str, *, method: str = "GET") -> dict[str, Any]:
        """GET (or DELETE, an admin key) /v1/pipelines/{name}."""
        return cast(
            "dict[str, Any]", self._request(method, f"/v1/pipelines/{quote(name, safe='')}")
        )

    def list_pipelines(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params = {"limit": limit, "offset": offset}
        return cast("dict[str, Any]", self._request("GET", "/v1/pipelines", params=params))

    def run_pipeline(self, name: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST /v1/pipelines/{name}/run (a write key): the queued run; 409 while one runs."""
        path = f"/v1/pipelines/{quote(name, safe='')}/run"
        return cast(
            "dict[str, Any]", self._request("POST", path, json_body=dict(body) if body else None)
        )

    def pipeline_runs(self, name: str, *, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """GET /v1/pipelines/{name}/runs: newest first."""
        path = f"/v1/pipelines/{quote(name, safe='')}/runs"
        params = {"limit": limit, "offset": offset}
        return cast("dict[str, Any]", self._request("GET", path, params=params))

    def pipeline_run(self, name: str, run_id: str) -> dict[str, Any]:
        path = f"/v1/pipelines/{quote(name, safe='')}/runs/{quote(run_id, safe='')}"
        return cast("dict[str, Any]", self._request("GET", path))
