"""Path parameters that hold an external id (a user's, an item's) in the serving routes.

Ids are any text, "/" included: the ASGI server decodes `%2F` before routing, so such a
parameter takes the whole rest of the path, never empty (`/v1/recommendations/` still falls
through to the batch route's trailing-slash redirect). Starlette compiles a route's path
when the route is added, so the convertor must be known by then: `ext_id()` registers it
before it returns the template, and every route with an id in its path is built with it.
"""

from __future__ import annotations

from starlette.convertors import CONVERTOR_TYPES, PathConvertor, register_url_convertor

CONVERTOR = "ext_id"


class ExternalIdConvertor(PathConvertor):
    """The rest of the path, "/" included, at least one character: an external id."""

    regex = r"[\s\S]+"  # any character, a newline (%0A) included: ids are opaque strings


def ext_id(name: str) -> str:
    """The path template of parameter `name` holding an external id: "{name:ext_id}"."""
    if CONVERTOR not in CONVERTOR_TYPES:
        register_url_convertor(CONVERTOR, ExternalIdConvertor())
    return f"{{{name}:{CONVERTOR}}}"
