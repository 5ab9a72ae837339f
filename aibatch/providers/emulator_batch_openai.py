"""The emulator's OpenAI Batch API: ``/v1/files`` and ``/v1/batches``.

Files: upload (``purpose=batch``, at most 50,000 lines and 200 MB), read, read the
content, delete. Batches: create from an uploaded file (each line ``{"custom_id",
"method": "POST", "url": "/v1/chat/completions", "body"}``; a malformed file fails the
batch with ``errors``), read, list newest first, cancel. An ended batch has an output
file of the answers and an error file of the rest (errors, expired and cancelled
requests); each is ``null`` when empty. The store and the clock are
:mod:`.emulator_batch`'s.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from .emulator_batch import WINDOW, Batch, BatchStore, json_object, read_capped

__all__ = ["OpenAIBatches", "metadata_problem", "read_batch_file", "upload_problem"]

MAX_FILE_LINES = 50_000
MAX_FILE_BYTES = 200 * 2**20
MAX_METADATA = 16
CHAT_ENDPOINT = "/v1/chat/completions"
_FILE_LIFE = 30 * 24 * 3600  # a batch file's lifetime
_MAX_ERRORS = 100  # the errors a failed validation lists


def upload_problem(
    purpose: str | None,
    data: bytes | None,
    *,
    max_lines: int = MAX_FILE_LINES,
    max_bytes: int = MAX_FILE_BYTES,
) -> str | None:
    """What is wrong with an OpenAI file upload, or ``None``."""
    if purpose != "batch":
        return f"purpose must be 'batch' (the emulator keeps batch files only), not {purpose!r}"
    if data is None:
        return "the form needs a 'file' part"
    if len(data) > max_bytes:
        return f"a batch file holds at most {max_bytes} bytes, not {len(data)}"
    lines = sum(1 for line in data.splitlines() if line.strip())
    if lines > max_lines:
        return f"a batch file holds at most {max_lines} requests, not {lines}"
    return None


def metadata_problem(metadata: object) -> str | None:
    """What is wrong with a batch's ``metadata`` (up to 16 string pairs), or ``None``."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        return f"metadata must be an object of at most {MAX_METADATA} pairs"
    for key, value in metadata.items():
        if not (isinstance(value, str) and len(key) <= 64 and len(value) <= 512):
            return "metadata keys are strings of at most 64 characters, values of at most 512"
    return None


def read_batch_file(
    data: bytes, endpoint: str = CHAT_ENDPOINT
) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """The requests of an OpenAI batch file (``custom_id``, body), and its errors.

    Each error is ``{"code", "message", "param", "line"}`` (lines count from 1); a file
    with any error fails validation as a whole.
    """
    requests: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        wrong = _line_problem(raw, endpoint, seen)
        if isinstance(wrong, tuple):
            code, message = wrong
            errors.append({"code": code, "message": message, "param": None, "line": number})
        else:
            seen.add(wrong["custom_id"])
            requests.append((wrong["custom_id"], wrong["body"]))
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "The file has no requests.", "line": None})
    return requests, errors[:_MAX_ERRORS]


def _line_problem(raw: bytes, endpoint: str, seen: set[str]) -> dict[str, Any] | tuple[str, str]:
    try:
        line = json.loads(raw)
    except ValueError:
        line = None
    if not isinstance(line, dict):
        return "invalid_json_line", "This line is not parseable as a JSON object."
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "custom_id must be a non-empty string."
    if custom_id in seen:
        return "duplicate_custom_id", f"custom_id {custom_id!r} is on an earlier line too."
    if line.get("method") != "POST":
        return "invalid_method", "method must be POST."
    if line.get("url") != endpoint:
        return "invalid_url", f"url must be {endpoint}, the endpoint of the batch."
    if not isinstance(line.get("body"), dict):
        return "missing_required_parameter", "body must be a JSON object."
    return line


@dataclass(slots=True)
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created: int = field(default_factory=lambda: int(time.time()))

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.created + _FILE_LIFE,
            "status_details": None,
        }


class OpenAIBatches(BatchStore):
    """OpenAI's Batch API: ``/v1/files`` and ``/v1/batches``."""

    prefix = "batch_"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.files: dict[str, _File] = {}

    def routes(self) -> list[web.RouteDef]:
        """The routes of the files and the batches."""
        guard = self._guard
        return [
            web.post("/v1/files", guard(self._upload)),
            web.get("/v1/files/{file_id}", guard(self._file)),
            web.get("/v1/files/{file_id}/content", guard(self._content)),
            web.delete("/v1/files/{file_id}", guard(self._delete_file)),
            web.post("/v1/batches", guard(self._create_batch)),
            web.get("/v1/batches", guard(self._list)),
            web.get("/v1/batches/{batch_id}", guard(self._retrieve)),
            web.post("/v1/batches/{batch_id}/cancel", guard(self._cancel_batch)),
        ]

    def _error(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": kind, "param": param, "code": None}}

    def _store(self, filename: str, purpose: str, data: bytes) -> _File:
        stored = _File(f"file-{secrets.token_hex(12)}", filename, purpose, data)
        self.files[stored.id] = stored
        return stored

    async def _upload(self, request: web.Request) -> web.Response:
        if request.content_type != "multipart/form-data":
            return self._refuse(400, "upload a multipart/form-data form (purpose, file)")
        purpose: str | None = None
        data: bytes | None = None
        filename = "input.jsonl"
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = await part.text()
            elif part.name == "file":
                filename = part.filename or filename
                data = await read_capped(part.read_chunk, MAX_FILE_BYTES)
                if data is None:
                    return self._refuse(400, f"a batch file holds at most {MAX_FILE_BYTES} bytes")
        if (problem := upload_problem(purpose, data)) is not None:
            return self._refuse(400, problem, "purpose" if purpose != "batch" else "file")
        assert data is not None
        self.stats.files_uploaded += 1
        return web.json_response(self._store(filename, "batch", data).view())

    def _file_of(self, request: web.Request) -> _File | web.Response:
        name = request.match_info["file_id"]
        found = self.files.get(name)
        return found or self._refuse(404, f"No such File object: {name}", "id")

    async def _file(self, request: web.Request) -> web.Response:
        found = self._file_of(request)
        return found if isinstance(found, web.Response) else web.json_response(found.view())

    async def _content(self, request: web.Request) -> web.Response:
        found = self._file_of(request)
        if isinstance(found, web.Response):
            return found
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.Response:
        found = self._file_of(request)
        if isinstance(found, web.Response):
            return found
        del self.files[found.id]
        return web.json_response({"id": found.id, "object": "file", "deleted": True})

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body is None:
            return self._refuse(400, "the body must be a JSON object")
        if body.get("endpoint") != CHAT_ENDPOINT:
            return self._refuse(400, f"endpoint must be {CHAT_ENDPOINT}", "endpoint")
        if body.get("completion_window") != "24h":
            return self._refuse(400, "completion_window must be '24h'", "completion_window")
        if (problem := metadata_problem(body.get("metadata"))) is not None:
            return self._refuse(400, problem, "metadata")
        name = body.get("input_file_id")
        source = self.files.get(name) if isinstance(name, str) else None
        if source is None:
            return self._refuse(404, f"No such File object: {name}", "input_file_id")
        if source.purpose != "batch":
            return self._refuse(400, "the input file's purpose must be 'batch'", "input_file_id")
        requests, errors = read_batch_file(source.data, CHAT_ENDPOINT)
        batch = self._create(requests if not errors else [], valid=not errors)
        model = requests[0][1].get("model") if requests else None
        batch.info.update(
            input_file_id=source.id,
            metadata=body.get("metadata"),
            errors=errors or None,
            model=model if isinstance(model, str) else None,
        )
        return web.json_response(self._view(batch, validating=True))

    async def _retrieve(self, request: web.Request) -> web.Response:
        found = self._found(request)
        return found if isinstance(found, web.Response) else web.json_response(self._view(found))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        found = self._found(request)
        if isinstance(found, web.Response):
            return found
        if not self._cancel(found) and self._status(found) != "cancelled":
            return self._refuse(409, f"Cannot cancel a batch with status {self._status(found)!r}.")
        return web.json_response(self._view(found))

    async def _list(self, request: web.Request) -> web.Response:
        found = self._page(request, 100)
        if isinstance(found, web.Response):
            return found
        batches, more = found
        return web.json_response(
            {
                "object": "list",
                "data": [self._view(b) for b in batches],
                "first_id": batches[0].id if batches else None,
                "last_id": batches[-1].id if batches else None,
                "has_more": more,
            }
        )

    def _ended(self, batch: Batch) -> None:
        assert batch.results is not None
        output: list[bytes] = []
        errors: list[bytes] = []
        usage = {"input_tokens": 0, "output_tokens": 0}
        for result in batch.results:
            if result.kind == "failed":
                continue
            line: dict[str, Any] = {
                "id": f"batch_req_{secrets.token_hex(12)}",
                "custom_id": result.custom_id,
                "response": None,
                "error": None,
            }
            if result.kind in ("answered", "error"):
                request_id = f"req_{secrets.token_hex(16)}"
                response = {"status_code": result.status, "request_id": request_id}
                line["response"] = {**response, "body": result.body}
            else:
                code = "batch_expired" if result.kind == "expired" else "batch_cancelled"
                line["error"] = {"code": code, "message": _UNRUN[result.kind]}
            if result.kind == "answered" and result.body is not None:
                counts = result.body.get("usage") or {}
                usage["input_tokens"] += counts.get("prompt_tokens", 0)
                usage["output_tokens"] += counts.get("completion_tokens", 0)
            (output if result.kind == "answered" else errors).append(json.dumps(line).encode())
        for key, lines in (("output_file_id", output), ("error_file_id", errors)):
            kind = key.split("_", 1)[0]
            if lines:
                stored = self._store(
                    f"{batch.id}_{kind}.jsonl", "batch_output", b"\n".join(lines) + b"\n"
                )
                batch.info[key] = stored.id
        batch.info["usage"] = usage
        if batch.failed and batch.cancel_at is None:
            batch.info["errors"] = [
                {"code": "batch_failed", "message": "The batch failed (injected).", "line": None}
            ]

    def _status(self, batch: Batch) -> str:
        if batch.results is None:
            return "in_progress" if batch.cancel_at is None else "cancelling"
        if batch.info.get("errors"):
            return "failed"
        if batch.cancel_at is not None:
            return "cancelled"
        if any(result.kind == "expired" for result in batch.results):
            return "expired"
        return "completed"

    def _view(self, batch: Batch, *, validating: bool = False) -> dict[str, Any]:
        info = batch.info
        status = "validating" if validating else self._status(batch)
        created = int(batch.created)
        ended = int(batch.ended_wall) if batch.ended_wall is not None and not validating else None
        counts = batch.counts()
        usage = info.get("usage") or {"input_tokens": 0, "output_tokens": 0}
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": CHAT_ENDPOINT,
            "errors": {"object": "list", "data": info["errors"]} if info.get("errors") else None,
            "input_file_id": info["input_file_id"],
            "completion_window": "24h",
            "status": status,
            "output_file_id": None if validating else info.get("output_file_id"),
            "error_file_id": None if validating else info.get("error_file_id"),
            "created_at": created,
            "in_progress_at": None if validating or not batch.requests else created,
            "expires_at": created + WINDOW,
            "finalizing_at": ended if status in ("completed", "expired") else None,
            "completed_at": ended if status == "completed" else None,
            "failed_at": ended if status == "failed" else None,
            "expired_at": ended if status == "expired" else None,
            "cancelling_at": int(batch.cancel_wall) if batch.cancel_wall is not None else None,
            "cancelled_at": ended if status == "cancelled" else None,
            "request_counts": {
                "total": len(batch.requests),
                "completed": counts["answered"],
                "failed": counts["error"],
            },
            "metadata": info["metadata"],
            "model": info["model"],
            "usage": {
                **usage,
                "total_tokens": usage["input_tokens"] + usage["output_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }


_UNRUN = {
    "expired": "This request could not be executed before the completion window expired.",
    "canceled": "This request was not executed because the batch was cancelled.",
}
