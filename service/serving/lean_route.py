"""FastAPI route classes for the hot endpoints: the same OpenAPI, a cheaper request handler.

`ScalarQueryRoute` serves GETs with scalar and list query parameters; `JsonBodyRoute` (at
the end) a POST with one pydantic body model.

FastAPI (0.165) re-inspects every parameter's annotation on each request while it solves
the endpoint's dependencies. On the serving benchmark that costs ~0.15 ms of the ~1.1 ms
of server CPU a recommendation takes, more than building the JSON body. `ScalarQueryRoute`
keeps FastAPI's route for matching, OpenAPI, the response model and error handling, and
replaces only the per-request handler: path parameters arrive as strings, scalar query
parameters are parsed with parsers chosen once when the route is built; a plain `def`
endpoint still runs in the threadpool, an `async def` one is awaited on the event loop
(it must not block it).

Only endpoints that fit are accepted (checked at startup, not per request): an optional
`Request` parameter, `str` path parameters (any convertor, `{name:path}` included: the
value arrives as the router matched it), query parameters of type int, float, bool, str or
a Literal of strings, or lists of str or int (repeated parameters: `?exclude=a&exclude=b`),
each optionally `| None`; no body, headers, cookies or dependencies, and a `Response` as
the return value. Bad query values raise RequestValidationError with FastAPI's error shape
(a bad list element is located by its position, as FastAPI does), so clients see the usual
422 body.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("bool_parsing", "Input should be a valid boolean, unable to interpret input")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(
            "int_parsing", "Input should be a valid integer, unable to parse string as an integer"
        ) from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError(
            "float_parsing", "Input should be a valid number, unable to parse string as a number"
        ) from None


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
    str: str,
}


def _literal_parser(choices: tuple[str, ...]) -> Callable[[str], str]:
    expected = " or ".join(", ".join(repr(c) for c in choices).rsplit(", ", 1))

    def parse(raw: str) -> str:
        if raw in choices:
            return raw
        raise ValueError("literal_error", f"Input should be {expected}")

    return parse


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _scalar_parser(annotation: Any, where: str) -> Callable[[str], Any]:
    """The parser for `annotation` (X or X | None with X a scalar or a Literal of strings);
    TypeError otherwise."""
    annotation = _without_none(annotation)
    if get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation)):
        return _literal_parser(get_args(annotation))
    parser = _PARSERS.get(annotation)
    if parser is None:
        raise TypeError(
            f"ScalarQueryRoute: {where} has type {annotation!r}; only int, float, bool, str, "
            "a Literal of str, list[str] or list[int]"
        )
    return parser


def _query_parser(annotation: Any, where: str) -> tuple[Callable[[str], Any], bool]:
    """(parser of one value, whether the parameter is a list of such values)."""
    bare = _without_none(annotation)
    if get_origin(bare) is list:
        (item,) = get_args(bare) or (Any,)
        if item in (str, int):
            return _PARSERS[item], True
        raise TypeError(
            f"ScalarQueryRoute: {where} has type {annotation!r}; lists hold only str or int"
        )
    return _scalar_parser(annotation, where), False


def _parse_list(
    raws: list[str], alias: str, parse: Callable[[str], Any], errors: list[dict[str, Any]]
) -> list[Any]:
    """A repeated query parameter (present at least once): every value parsed."""
    values = []
    for pos, raw in enumerate(raws):
        try:
            values.append(parse(raw))
        except ValueError as exc:
            kind, msg = exc.args
            errors.append({"type": kind, "loc": ("query", alias, pos), "msg": msg, "input": raw})
    return values


class ScalarQueryRoute(APIRoute):
    """APIRoute whose handler parses scalar query parameters directly (see module doc)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        # APIRoute.__init__ calls this once, after building self.dependant: the checks and
        # parser choices happen here, at startup.
        dep, endpoint = self.dependant, self.endpoint
        where = f"{self.path} ({getattr(endpoint, '__name__', endpoint)})"
        is_async = inspect.iscoroutinefunction(endpoint)
        if dep.dependencies or dep.body_params or dep.header_params or dep.cookie_params:
            raise TypeError(
                f"ScalarQueryRoute: {where} may only take a Request, path and query parameters"
            )
        for f in dep.path_params:
            if f.field_info.annotation is not str:
                raise TypeError(f"ScalarQueryRoute: path parameter {f.name} of {where} must be str")
        path_names = [f.name for f in dep.path_params]
        query = [
            (
                f.name,
                f.alias,
                *_query_parser(f.field_info.annotation, f"query parameter {f.name} of {where}"),
                f.field_info.is_required(),
                f.field_info.default,
            )
            for f in dep.query_params
        ]
        request_name = dep.request_param_name

        async def handler(request: Request) -> Response:
            kwargs: dict[str, Any] = {name: request.path_params[name] for name in path_names}
            params = request.query_params
            errors: list[dict[str, Any]] = []
            for name, alias, parse, is_list, required, default in query:
                if is_list and (raws := params.getlist(alias)):
                    kwargs[name] = _parse_list(raws, alias, parse, errors)
                    continue
                raw = None if is_list else params.get(alias)
                if raw is None:
                    if required:
                        errors.append(
                            {
                                "type": "missing",
                                "loc": ("query", alias),
                                "msg": "Field required",
                                "input": None,
                            }
                        )
                    kwargs[name] = default
                    continue
                try:
                    kwargs[name] = parse(raw)
                except ValueError as exc:
                    kind, msg = exc.args
                    errors.append({"type": kind, "loc": ("query", alias), "msg": msg, "input": raw})
            if errors:
                raise RequestValidationError(errors)
            if request_name:
                kwargs[request_name] = request
            if is_async:
                response = await endpoint(**kwargs)
            else:
                response = await run_in_threadpool(endpoint, **kwargs)
            if not isinstance(response, Response):
                raise TypeError(
                    f"{request.url.path}: a ScalarQueryRoute endpoint must return a Response"
                )
            return response

        return handler


def _stock_body_errors(model: type[BaseModel], raw: bytes) -> list[dict[str, Any]]:
    """The 422 errors FastAPI gives for this body: json.loads, then validation of the Python
    value (a body that is not UTF-8: FastAPI's 400). Only a rejected body comes here, so the
    happy path parses once."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return [
            {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
        ]
    except UnicodeDecodeError:
        raise HTTPException(400, "There was an error parsing the body") from None  # as FastAPI
    try:
        model.model_validate(data, from_attributes=True)  # FastAPI validates its body field so
    except ValidationError as exc:
        return [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
    # pydantic's JSON mode refused what its Python mode accepts (not seen with our models)
    return [{"type": "value_error", "loc": ("body",), "msg": "body not accepted", "input": data}]


class JsonBodyRoute(APIRoute):
    """APIRoute for a hot POST whose only inputs are an optional `Request` and one pydantic
    model read from the JSON body: the body is parsed by the model's own JSON validator
    (`model_validate_json`, one pass in pydantic-core) instead of FastAPI's body dependency
    (json.loads, then dependency solving, then validation). Errors keep FastAPI's shape:
    an empty body is `missing` at ("body",), bad JSON `json_invalid` at ("body",), a bad
    field its pydantic error located under "body". The endpoint must be `async def` and
    return a Response. bench/serve.py: by-history cost 0.21 ms of server CPU more than the
    plain GET on FastAPI's path (docs/service.md "The tail under load").
    """

    def get_route_handler(self) -> Callable[[Request], Any]:
        dep, endpoint = self.dependant, self.endpoint
        where = f"{self.path} ({getattr(endpoint, '__name__', endpoint)})"
        if not inspect.iscoroutinefunction(endpoint):
            raise TypeError(f"JsonBodyRoute: {where} must be async def")
        if (
            dep.dependencies
            or dep.path_params
            or dep.query_params
            or dep.header_params
            or dep.cookie_params
        ):
            raise TypeError(f"JsonBodyRoute: {where} may only take a Request and one body model")
        if len(dep.body_params) != 1:
            raise TypeError(f"JsonBodyRoute: {where} needs exactly one body parameter")
        field = dep.body_params[0]
        model = field.field_info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(
                f"JsonBodyRoute: the body of {where} must be a pydantic model, not {model!r}"
            )
        name, request_name = field.name, dep.request_param_name

        async def handler(request: Request) -> Response:
            raw = await request.body()
            if not raw:
                raise RequestValidationError(
                    [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
                )
            try:
                value = model.model_validate_json(raw)
            except ValidationError:
                raise RequestValidationError(_stock_body_errors(model, raw)) from None
            kwargs: dict[str, Any] = {name: value}
            if request_name:
                kwargs[request_name] = request
            response = await endpoint(**kwargs)
            if not isinstance(response, Response):
                raise TypeError(
                    f"{request.url.path}: a JsonBodyRoute endpoint must return a Response"
                )
            return response

        return handler
