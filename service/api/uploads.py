"""Streaming multipart upload: the file part goes to disk chunk by chunk, size-checked.

Starlette's form parser spools the whole body before a route sees it, so a size limit
checked in the route comes after the bytes were received. Here the request stream feeds
python-multipart directly and an upload is refused (413) the moment it passes the limit.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

logger = logging.getLogger(__name__)

FILE_FIELD = "file"
MAX_FIELD_BYTES = 16 * 1024  # a form field (format, split, …) is a short string
MAX_PARTS = 32
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class UploadError(Exception):
    """A bad upload: HTTP status and a detail that names the field."""

    def __init__(self, status_code: int, detail: str) -> None:
        self.status_code, self.detail = status_code, detail
        super().__init__(detail)


def safe_filename(name: str) -> str:
    """The client's file name reduced to a harmless basename (the suffix tells the format)."""
    base = _SAFE_NAME.sub("_", Path(name.replace("\\", "/")).name).lstrip(".")
    return base[:200] or "upload"


@dataclass
class Upload:
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """python-multipart callbacks writing the `file` part to `dest_dir`."""

    def __init__(self, dest_dir: Path, max_bytes: int) -> None:
        self.dest_dir = dest_dir
        self.max_bytes = max_bytes
        self.upload = Upload()
        self.parts = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._file: IO[bytes] | None = None
        self._buffer = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(422, f"body: more than {MAX_PARTS} form parts")
        self._headers, self._name, self._buffer = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", errors="replace")
        if not name:
            raise UploadError(422, "body: a form part has no name")
        self._name = name
        filename = params.get(b"filename")
        if filename is None:
            return
        if name != FILE_FIELD:
            raise UploadError(
                422, f"{name}: unexpected file part; send the data as field '{FILE_FIELD}'"
            )
        if self.upload.path is not None:
            raise UploadError(422, f"{FILE_FIELD}: send exactly one file")
        self.upload.filename = safe_filename(filename.decode("utf-8", errors="replace"))
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        self.upload.path = self.dest_dir / self.upload.filename
        self._file = open(self.upload.path, "wb")  # noqa: SIM115 - closed in on_part_end/close

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise UploadError(
                    413, f"{FILE_FIELD}: upload exceeds upload_max_bytes={self.max_bytes} bytes"
                )
            self._file.write(data[start:end])
            return
        self._buffer += data[start:end]
        if len(self._buffer) > MAX_FIELD_BYTES:
            raise UploadError(422, f"{self._name}: form field longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._name is not None:
            try:
                self.upload.fields[self._name] = self._buffer.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UploadError(422, f"{self._name}: form field is not UTF-8") from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def receive_upload(request: Request, dest_dir: Path, max_bytes: int) -> Upload:
    """Stream a multipart/form-data body; the `file` part is written under `dest_dir`.

    Raises:
        UploadError: 413 past `max_bytes` (checked while streaming, and up front from
            Content-Length), 422 for a malformed body, a missing `file` or an empty one.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(422, "Content-Type: expected multipart/form-data with a boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise UploadError(413, f"{FILE_FIELD}: upload exceeds upload_max_bytes={max_bytes} bytes")
    receiver = _Receiver(dest_dir, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors carry no field
        raise UploadError(422, f"body: malformed multipart data ({exc})") from exc
    finally:
        receiver.close()
    upload = receiver.upload
    if upload.path is None:
        raise UploadError(
            422, f"{FILE_FIELD}: missing; send the interactions as form field '{FILE_FIELD}'"
        )
    if upload.size == 0:
        raise UploadError(422, f"{FILE_FIELD}: the uploaded file is empty")
    logger.info("received upload %s (%d bytes)", upload.filename, upload.size)
    return upload
