"""JsonBodyRoute: the same answers, 422 bodies and OpenAPI as FastAPI's own body handling
for a POST with one pydantic model, through a cheaper handler."""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from service.serving.lean_route import JsonBodyRoute


class Body(BaseModel):
    items: list[str] = Field(min_length=1, max_length=5)
    k: int = 20
    exclude_seen: bool = True
    model: str | None = None


async def echo(request: Request, req: Body) -> Response:
    """Echo the parsed body."""
    assert isinstance(request, Request)
    return Response(req.model_dump_json(), media_type="application/json")


def app_with(route_class: type | None) -> FastAPI:
    router = APIRouter()
    kwargs = {"route_class_override": route_class} if route_class else {}
    router.add_api_route("/echo", echo, methods=["POST"], **kwargs)
    app = FastAPI()
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def clients() -> tuple[TestClient, TestClient]:
    return TestClient(app_with(None)), TestClient(app_with(JsonBodyRoute))


BODIES = [
    b'{"items": ["a", "b"]}',
    b'{"items": ["a"], "k": 5, "exclude_seen": false, "model": "m1"}',
    b'{"items": ["a"], "k": "7"}',  # lax mode: a numeric string is an int, for both
    b'{"items": ["a"], "unknown": 1}',  # extra fields ignored, for both
    b"",  # missing body
    b"{",  # broken JSON
    b'{"items": ["a"]} x',  # trailing garbage
    b"\xff{",  # not UTF-8
    b"[1, 2]",  # not an object
    b'{"items": []}',  # too short
    b'{"items": ["a", 3]}',  # a bad element, located by position
    b'{"items": ["a"], "k": "x", "exclude_seen": "maybe"}',  # two errors
    b'{"k": 3}',  # a required field missing
]


@pytest.mark.parametrize("raw", BODIES)
def test_same_status_and_body_as_fastapi(
    clients: tuple[TestClient, TestClient], raw: bytes
) -> None:
    stock, lean = clients
    headers = {"Content-Type": "application/json"}
    a = stock.post("/echo", content=raw, headers=headers)
    b = lean.post("/echo", content=raw, headers=headers)
    assert b.status_code == a.status_code, (raw, a.text, b.text)
    if a.status_code == 200:
        assert b.json() == a.json()
        return
    assert b.json() == a.json()


def test_openapi_is_unchanged(clients: tuple[TestClient, TestClient]) -> None:
    stock, lean = clients
    assert lean.get("/openapi.json").json() == stock.get("/openapi.json").json()


async def takes_query(req: Body, k: int = Query(3)) -> Response:
    return Response(json.dumps(k))


async def not_async_def(req: Body) -> Response:  # replaced by a plain def below
    return Response("")


def plain_def(req: Body) -> Response:
    return Response("")


async def no_body(request: Request) -> Response:
    return Response("")


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (takes_query, "only take a Request and one body model"),
        (plain_def, "must be async def"),
        (no_body, "exactly one body parameter"),
    ],
)
def test_unsuitable_endpoints_are_refused_at_startup(endpoint: object, message: str) -> None:
    router = APIRouter()
    with pytest.raises(TypeError, match=message):
        router.add_api_route("/x", endpoint, methods=["POST"], route_class_override=JsonBodyRoute)  # type: ignore[arg-type]
