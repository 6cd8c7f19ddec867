"""Request-body limit for every endpoint except the streaming dataset upload.

FastAPI reads a JSON body whole before validation, so a client could otherwise send a
gigabyte of `user_ids` and have it buffered and parsed before any bound is checked. This
pure ASGI middleware answers 413 up front when Content-Length is over the limit, and
stops a chunked body the moment it passes it. Multipart uploads are left to
service/api/uploads.py, which streams them to disk under settings.upload_max_bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import HTTPException

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """413; an HTTPException so FastAPI's body reader re-raises it instead of a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"body: request body exceeds max_body_bytes={max_bytes} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_upload(scope):
            await self.app(scope, receive, send)
            return
        declared = self._content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)

    @staticmethod
    def _is_upload(scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"content-type":
                return value.split(b";")[0].strip().lower() == b"multipart/form-data"
        return False

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                return int(value) if value.isdigit() else None
        return None

    async def _refuse(self, send: Send) -> None:
        body = BodyTooLarge(self.max_bytes).detail
        payload = ('{"detail":"' + body + '"}').encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
