"""API keys with roles: who may act, and what they may do.

Keys come from Settings (`UNKD_API_KEYS`, `UNKD_API_KEYS_FILE`; service.core.config): each
has a name, a role and the secret. Roles nest, each allowing what the one before does:

    read    recommendations, reports, listings (open to anyone while reads stay open)
    write   + datasets, jobs (submit, cancel)
    admin   + publish (a distill job with "publish": true too), rollback, the gate's `force`

With no keys configured every route is open, as before. With keys, a route needing
`write` or `admin` answers 401 without a bearer token, 403 with a key not configured, and
403 naming the role needed when the key's role is below it. Reads stay open by design.
Keys are compared in constant time against every configured key and never logged; logs
name the key (`alice`), never the secret.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.core.config import ROLES, ApiKey, Role, Settings

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="one of UNKD_API_KEYS (or UNKD_API_KEYS_FILE)")


@dataclass(frozen=True)
class Caller:
    """Who made the request: the key's name and role; name None when keys are off."""

    name: str | None
    role: Role

    def allows(self, needed: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)


OPEN = Caller(name=None, role="admin")  # no keys configured: everything is allowed, as before


def match_key(candidate: str, keys: list[ApiKey]) -> ApiKey | None:
    """Constant-time comparison against every configured key (no early exit)."""
    given = candidate.encode()
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(given, key.key.encode()):
            found = key
    return found


def key_matches(candidate: str, keys: list[str]) -> bool:
    """Whether `candidate` is one of the plain `keys` (constant time, no early exit)."""
    return (
        match_key(candidate, [ApiKey(f"key{i}", "admin", k) for i, k in enumerate(keys, 1)])
        is not None
    )


def forbidden(caller: Caller, needed: Role, what: str) -> HTTPException:
    """403 naming the role `what` needs and the role the caller's key has."""
    return HTTPException(
        status_code=status.HTTP_403_FORBIDDEN,
        detail=f"Authorization: {what} needs a key with role {needed}; key {caller.name!r} has role {caller.role}",
    )


def authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None, needed: Role
) -> Caller:
    """The caller of a request that needs `needed` (when keys are configured)."""
    settings: Settings = request.app.state.settings
    keys = settings.keys
    if not keys:
        return OPEN
    metrics = request.app.state.metrics
    if credentials is None or not credentials.credentials:
        metrics.auth_failures.labels(reason="missing").inc()
        logger.info("auth: %s %s without a bearer token", request.method, request.url.path)
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Authorization: missing bearer token (send 'Authorization: Bearer <api key>')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = match_key(credentials.credentials, keys)
    if key is None:
        metrics.auth_failures.labels(reason="invalid").inc()
        logger.info("auth: %s %s with a wrong API key", request.method, request.url.path)
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="Authorization: API key not accepted"
        )
    caller = Caller(name=key.name, role=key.role)
    if not caller.allows(needed):
        metrics.auth_failures.labels(reason="role").inc()
        logger.info(
            "auth: %s %s refused to key %s (role %s, needs %s)",
            request.method,
            request.url.path,
            key.name,
            key.role,
            needed,
        )
        raise forbidden(caller, needed, f"{request.method} {request.url.path}")
    return caller


def require_role(needed: Role) -> Callable[..., Caller]:
    """A dependency that answers 401/403 unless the request's key has at least `needed`."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        return authenticate(request, credentials, needed)

    dependency.__name__ = f"require_{needed}"
    return dependency


WriteCaller = Annotated[Caller, Depends(require_role("write"))]
AdminCaller = Annotated[Caller, Depends(require_role("admin"))]
WriteAccess = Depends(require_role("write"))
AdminAccess = Depends(require_role("admin"))
