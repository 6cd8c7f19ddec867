"""ScalarQueryRoute: FastAPI's parameters, defaults, 422 bodies and OpenAPI, cheaper handler."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.testclient import TestClient

from service.serving.lean_route import ScalarQueryRoute


def echo(
    request: Request,
    user_id: str,
    k: int = Query(20, description="how many"),
    exclude_seen: bool = True,
    model: str | None = None,
    temperature: float = 1.0,
    needed: int = Query(...),
    tags: Annotated[list[str] | None, Query()] = None,
    groups: Annotated[list[int] | None, Query()] = None,
    mode: Literal["popular", "debiased", "other"] | None = None,
) -> Response:
    """Echo the parsed values."""
    assert isinstance(request, Request)
    values = {
        "user_id": user_id,
        "k": k,
        "exclude_seen": exclude_seen,
        "model": model,
        "temperature": temperature,
        "needed": needed,
        "tags": tags,
        "groups": groups,
        "mode": mode,
    }
    return Response(json.dumps(values), media_type="application/json")


async def echo_async(
    request: Request,
    user_id: str,
    k: int = Query(20, description="how many"),
    exclude_seen: bool = True,
    model: str | None = None,
    temperature: float = 1.0,
    needed: int = Query(...),
    tags: Annotated[list[str] | None, Query()] = None,
    groups: Annotated[list[int] | None, Query()] = None,
    mode: Literal["popular", "debiased", "other"] | None = None,
) -> Response:
    """Echo the parsed values, awaited on the event loop."""
    return echo(request, user_id, k, exclude_seen, model, temperature, needed, tags, groups, mode)


def app_with(route_class: type | None) -> FastAPI:
    router = APIRouter()
    kwargs = {"route_class_override": route_class} if route_class else {}
    router.add_api_route("/echo/{user_id}", echo, methods=["GET"], **kwargs)
    router.add_api_route("/echo-async/{user_id}", echo_async, methods=["GET"], **kwargs)
    router.add_api_route("/echo-path/{user_id:path}", echo, methods=["GET"], **kwargs)
    app = FastAPI()
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def clients() -> tuple[TestClient, TestClient]:
    return TestClient(app_with(ScalarQueryRoute)), TestClient(app_with(None))


@pytest.mark.parametrize(
    "query",
    [
        "needed=1",
        "needed=2&k=5&exclude_seen=false&model=m1&temperature=0.5",
        "needed=3&exclude_seen=0",
        "needed=3&exclude_seen=YES",
        "needed=3&exclude_seen=off&unknown=ignored",
        "needed=3&model=a%20b",
        "needed=1&tags=a&tags=b%2Fc&tags=a&groups=2&groups=0",  # repeated: every value, in order
        "needed=1&tags=&groups=3",  # an empty value is still a value
        "needed=1&mode=debiased",
        "needed=1&mode=other&groups=-1",
    ],
)
def test_same_answers_as_fastapi(clients, query: str) -> None:
    lean, plain = clients
    for path in ("/echo", "/echo-async"):  # plain def (threadpool) and async def (awaited)
        a, b = lean.get(f"{path}/u%201?{query}"), plain.get(f"{path}/u%201?{query}")
        assert a.status_code == b.status_code == 200
        assert a.json() == b.json()


@pytest.mark.parametrize(
    "raw, user_id", [("a%2Fb", "a/b"), ("a/b/c", "a/b/c"), ("%2Flead", "/lead")]
)
def test_path_converter_parameters_arrive_whole(clients, raw: str, user_id: str) -> None:
    lean, plain = clients
    a, b = lean.get(f"/echo-path/{raw}?needed=1"), plain.get(f"/echo-path/{raw}?needed=1")
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json() and a.json()["user_id"] == user_id


@pytest.mark.parametrize(
    "query, loc, kind",
    [
        ("", "needed", "missing"),
        ("needed=x", "needed", "int_parsing"),
        ("needed=1&k=1.5", "k", "int_parsing"),
        ("needed=1&exclude_seen=maybe", "exclude_seen", "bool_parsing"),
        ("needed=1&temperature=hot", "temperature", "float_parsing"),
        ("needed=1&groups=1&groups=x", ["groups", 1], "int_parsing"),  # located by position
        ("needed=1&mode=popularity", "mode", "literal_error"),
    ],
)
def test_bad_values_give_fastapis_422(clients, query: str, loc: str | list, kind: str) -> None:
    lean, plain = clients
    a, b = lean.get(f"/echo/u1?{query}"), plain.get(f"/echo/u1?{query}")
    assert a.status_code == b.status_code == 422
    (err,) = a.json()["detail"]
    assert (
        err["loc"] == ["query", *([loc] if isinstance(loc, str) else loc)] and err["type"] == kind
    )
    assert b.json()["detail"][0]["loc"] == err["loc"] and b.json()["detail"][0]["type"] == kind
    assert b.json()["detail"][0]["msg"] == err["msg"]


def test_openapi_is_unchanged(clients) -> None:
    lean, plain = clients
    assert lean.get("/openapi.json").json()["paths"] == plain.get("/openapi.json").json()["paths"]


def needs_body(payload: dict = Body(...)) -> Response:  # noqa: B008
    return Response()


def needs_dependency(x: int = Depends(lambda: 1)) -> Response:  # noqa: B008
    return Response()


def float_list_query(ids: list[float] = Query([])) -> Response:  # noqa: B008
    return Response()


def int_literal_query(mode: Literal[1, 2] = 1) -> Response:
    return Response()


def int_path(user_id: int) -> Response:
    return Response()


@pytest.mark.parametrize(
    "endpoint, path, message",
    [
        (needs_body, "/b", "only take a Request"),
        (needs_dependency, "/d", "only take a Request"),
        (float_list_query, "/l", "lists hold only str or int"),
        (int_literal_query, "/m", "only int, float, bool, str"),
        (int_path, "/p/{user_id}", "must be str"),
    ],
)
def test_unsuitable_endpoints_are_refused_at_startup(endpoint, path: str, message: str) -> None:
    router = APIRouter()
    methods = ["POST"] if endpoint is needs_body else ["GET"]
    with pytest.raises(TypeError, match=message):
        router.add_api_route(path, endpoint, methods=methods, route_class_override=ScalarQueryRoute)
