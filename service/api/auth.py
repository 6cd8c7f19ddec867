"""API keys: when settings.api_keys is non-empty, mutating endpoints need one.

`Authorization: Bearer <key>`: 401 without a bearer token, 403 with a wrong one. Keys
are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.core.config import Settings

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="one of UNKD_API_KEYS")


def key_matches(candidate: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    given = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse a mutating request without a valid API key (when keys are configured)."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return
    metrics = request.app.state.metrics
    if credentials is None or not credentials.credentials:
        metrics.auth_failures.labels(reason="missing").inc()
        logger.info("auth: %s %s without a bearer token", request.method, request.url.path)
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Authorization: missing bearer token (send 'Authorization: Bearer <api key>')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not key_matches(credentials.credentials, settings.api_keys):
        metrics.auth_failures.labels(reason="invalid").inc()
        logger.info("auth: %s %s with a wrong API key", request.method, request.url.path)
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="Authorization: API key not accepted",
        )


WriteAccess = Depends(require_api_key)
