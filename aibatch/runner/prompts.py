"""Rows to requests.

A row's request comes from the prompt column, a template over columns, or a column of
whole conversations, with an optional system message first, and the images of its
``--image-column`` cells added to its (last) user message.

Templates take plain column names only. They are not rendered with ``str.format``,
which would let ``{text.__class__.__mro__}`` reach into Python objects: a template is
parsed once into literal text and column names, and rendering only joins strings.
``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputChanged, InputError, UsageError, shown
from ..io.images import read_image
from ..io.inputs import Batch
from ..jobs.checkpoint import PromptHasher, positional_row_keys, request_hash, row_keys
from ..jobs.spec import JobSpec
from ..providers.helpers import to_text
from ..types import ChatRequest, Image, Message

__all__ = ["BatchKeys", "PromptBuilder", "parse_template"]


@dataclass(frozen=True, slots=True)
class BatchKeys:
    """The keys of a batch's rows, as the checkpoint knows them (``uint64``).

    Attributes:
        row_keys: each row's :func:`~aibatch.jobs.checkpoint.row_key`; 0 when skipped.
        request_hashes: each row's :func:`~aibatch.jobs.checkpoint.request_hash`; 0 when
            skipped.
        skipped: whether the row has nothing to ask.
        id_hashes: with ``--id-column``, ``row_key(id, 0)`` of each row, to find repeats.
    """

    row_keys: np.ndarray
    request_hashes: np.ndarray
    skipped: np.ndarray
    id_hashes: np.ndarray | None


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split ``template`` into ``(literal, column)`` pieces.

    Raises:
        UsageError: unbalanced braces, or a field that is not a plain column name.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(
            f"--template {template!r}: {exc} (write {{{{ and }}}} for braces)"
        ) from exc
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None))
            continue
        field = (
            "{"
            + name
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if not name.strip():
            raise UsageError(f"--template: {field} names no column; write {{column_name}}")
        if conversion or spec or any(c in name for c in ".[]"):
            raise UsageError(
                f"--template: {field} is not a plain column name; templates take"
                " {column_name} only (no attributes, indexes, conversions or formats)"
            )
        pieces.append((literal, name))
    return pieces


class PromptBuilder:
    """Builds each row's :class:`ChatRequest` the way the job's options say.

    Args:
        spec: the job.
        model: the resolved model name.
        path: the input, for error messages.
    """

    def __init__(self, spec: JobSpec, model: str, path: str) -> None:
        self.spec = spec
        self.model = model
        self.path = path
        self.template = parse_template(spec.template) if spec.template is not None else None
        self.system = (Message("system", spec.system),) if spec.system else ()
        self.options = spec.sampling()
        self.schema = spec.schema
        self.json_mode = spec.json_mode
        self.image_columns = spec.image_columns or ()
        source = Path(spec.input)
        self.folder = source if source.is_dir() else source.parent  # relative image paths
        self._hashers: dict[str, PromptHasher] = {}

    def needed_columns(self) -> list[str]:
        """The input columns the job reads."""
        if self.spec.messages_column:
            names = [self.spec.messages_column]
        elif self.template is not None:
            names = list(dict.fromkeys(name for _, name in self.template if name is not None))
        else:
            names = [self.spec.prompt_column]
        if self.spec.id_column:
            names.append(self.spec.id_column)
        return names + [n for n in self.image_columns if n not in names]

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise an :class:`InputError` naming the first needed column that is missing.

        When the header is one name holding ``;``, ``|``, a tab or a comma, the file was
        split on the wrong character: the message names the ``--delimiter`` to pass. When
        the column is there in quotes, it names ``--quoting csv``.
        """
        for name in self.needed_columns():
            if name not in columns:
                option = (
                    "--messages-column"
                    if name == self.spec.messages_column
                    else "--id-column"
                    if name == self.spec.id_column
                    else "--image-column"
                    if name in self.image_columns
                    else "--template"
                    if self.template is not None
                    else "--prompt-column"
                )
                raise InputError(
                    self.path,
                    f"no column {name!r} ({option}); the columns are:"
                    f" {', '.join(map(shown, columns))}{_hint(name, columns)}",
                )

    def ids(self, batch: Batch) -> list[str]:
        """Each row's id: the ``--id-column`` value, else its 0-based position."""
        n = batch.data.num_rows
        if not self.spec.id_column:
            return [str(i) for i in range(batch.first_row, batch.first_row + n)]
        values = self._texts(batch, self.spec.id_column)
        for index, value in enumerate(values):
            if value is None or value == "":
                line, row = batch.line_of(index)
                raise InputError(
                    self.path, f"row {row} has no id", line=line, column=self.spec.id_column
                )
        return [str(v) for v in values]

    def keys(self, batch: Batch, service: str) -> BatchKeys:
        """The keys of each row of ``batch``: what the scan records of it.

        When requests differ only in their prompt's text (no messages column, no
        images), each is hashed from that text without building its request: the
        values are the same.

        Raises:
            InputError: as :meth:`requests` and :meth:`ids` do.
        """
        ids = self.ids(batch) if self.spec.id_column else None
        if self.spec.messages_column or self.image_columns:
            requests = self.requests(batch)
            skipped = np.array([r is None for r in requests], bool)
            hashes = np.array(
                [0 if r is None else request_hash(r, service) for r in requests], np.uint64
            )
        else:
            prompts = self._prompts(batch)
            skipped = np.array([p is None for p in prompts], bool)
            hashes = self._hasher(service).hashes(prompts)
        if ids is None:
            keys = positional_row_keys(batch.first_row, hashes)
            id_hashes = None
        else:
            keys = row_keys(ids, hashes)
            id_hashes = row_keys(ids, np.zeros(len(ids), np.uint64))
        keys[skipped] = 0
        return BatchKeys(keys, hashes, skipped, id_hashes)

    def sent_keys(
        self, batch: Batch, rows: Sequence[int], requests: Sequence[ChatRequest], service: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The request hashes and row keys of ``requests``, the requests of ``batch``'s ``rows``.

        What :meth:`keys` gives those rows, from the requests the send step built: the
        plain prompts' hashes go on from one hashed prefix, and the row keys of rows
        that follow each other without an id column are hashed as a range.
        """
        if self.spec.messages_column or self.image_columns:
            hashes = np.array([request_hash(r, service) for r in requests], np.uint64)
        else:  # each request is _request(prompt): only its last message's text differs
            hashes = self._hasher(service).hashes([r.messages[-1].content for r in requests])
        if self.spec.id_column:
            ids = self.ids(batch)
            return hashes, row_keys([ids[i] for i in rows], hashes)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # a range: rows are in order
            return hashes, positional_row_keys(batch.first_row + rows[0], hashes)
        return hashes, row_keys([str(batch.first_row + i) for i in rows], hashes)

    def _hasher(self, service: str) -> PromptHasher:
        hasher = self._hashers.get(service)
        if hasher is None:
            like = self._request("")
            hasher = self._hashers[service] = PromptHasher(like, service)
        return hasher

    def requests(
        self,
        batch: Batch,
        *,
        load_images: bool = False,
        only: Sequence[int] | None = None,
        texts: list[ChatRequest | None] | None = None,
    ) -> list[ChatRequest | None]:
        """Each row's request, or ``None`` for a row with nothing to ask (skipped).

        Args:
            batch: the rows.
            load_images: read the images' bytes, to send them; else (the scan) only
                their hashes, so that no image is kept in memory.
            only: read the images of these rows of ``batch`` only (the others' requests
                come without them): the send step loads a few rows' images at a time.
            texts: the batch's requests without images, when already built.

        Raises:
            InputError: a messages cell that is not a JSON list of ``{role, content}``;
                an image cell naming a missing file or holding no PNG, JPEG, GIF or WebP.
            InputChanged: (``load_images``) an image that could be read at the scan can
                no longer be.
        """
        requests = self._requests(batch) if texts is None else texts
        if not self.image_columns:
            return requests
        images = self._images(batch, load_images, only)
        out: list[ChatRequest | None] = []
        for request, row_images in zip(requests, images, strict=True):
            if request is None or not row_images:
                out.append(request)
            else:
                out.append(_with_images(request, row_images))
        return out

    def _images(
        self, batch: Batch, load: bool, only: Sequence[int] | None
    ) -> list[tuple[Image, ...]]:
        rows: list[list[Image]] = [[] for _ in range(batch.data.num_rows)]
        for name in self.image_columns:
            cells = _column(batch, name)
            for index in range(len(cells)) if only is None else only:
                cell = cells[index]
                try:
                    image = read_image(cell, self.folder, load=load)
                except ValueError as exc:
                    line, row = batch.line_of(index)
                    if load:
                        raise InputChanged(self.path, f"row {row}, column {name}: {exc}") from exc
                    raise InputError(
                        self.path, f"row {row}: {exc}", line=line, column=name
                    ) from exc
                if image is not None:
                    rows[index].append(image)
        return [tuple(images) for images in rows]

    def texts(self, batch: Batch) -> list[ChatRequest | None]:
        """Each row's request without its images (see :meth:`requests`)."""
        return self._requests(batch)

    def _requests(self, batch: Batch) -> list[ChatRequest | None]:
        if self.spec.messages_column:
            return self._from_messages(batch)
        return [None if p is None else self._request(p) for p in self._prompts(batch)]

    def _request(self, prompt: str) -> ChatRequest:
        return ChatRequest(
            messages=(*self.system, Message("user", prompt)),
            model=self.model,
            options=self.options,
            schema=self.schema,
            json_mode=self.json_mode,
        )

    def _prompts(self, batch: Batch) -> list[str | None]:
        """Each row's prompt text (its column, or the template filled); None if blank."""
        if self.template is not None:
            prompts = self._from_template(batch)
        else:
            prompts = self._texts(batch, self.spec.prompt_column)
        return [None if not p or p.isspace() else p for p in prompts]

    def _from_template(self, batch: Batch) -> list[str | None]:
        assert self.template is not None
        columns = {name: self._texts(batch, name) for _, name in self.template if name is not None}
        out: list[str | None] = []
        for i in range(batch.data.num_rows):
            values = {name: column[i] for name, column in columns.items()}
            if columns and all(v is None or str(v).strip() == "" for v in values.values()):
                out.append(None)
                continue
            out.append(
                "".join(
                    literal + ("" if name is None or values[name] is None else str(values[name]))
                    for literal, name in self.template
                )
            )
        return out

    def _from_messages(self, batch: Batch) -> list[ChatRequest | None]:
        name = self.spec.messages_column
        assert name is not None
        out: list[ChatRequest | None] = []
        for index, cell in enumerate(_column(batch, name)):
            try:
                messages = _parse_messages(cell)
            except ValueError as exc:
                line, row = batch.line_of(index)
                raise InputError(self.path, f"row {row}: {exc}", line=line, column=name) from exc
            if not any(m.content.strip() for m in messages):
                out.append(None)
                continue
            if self.system and not (messages and messages[0].role == "system"):
                messages = [*self.system, *messages]
            out.append(
                ChatRequest(
                    messages=tuple(messages),
                    model=self.model,
                    options=self.options,
                    schema=self.schema,
                    json_mode=self.json_mode,
                )
            )
        return out

    def _texts(self, batch: Batch, name: str) -> list[str | None]:
        """A column's cells as text: bytes decoded as UTF-8, lists and structs as JSON."""
        values = _column(batch, name)
        index = batch.data.schema.get_field_index(name)
        if index < 0 or str(batch.data.schema.field(index).type) in _TEXT_TYPES:
            return values  # text already: no need to look at each value
        if all(v is None or isinstance(v, str) for v in values):
            return values
        out: list[str | None] = []
        for index, value in enumerate(values):
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line, row = batch.line_of(index)
                    raise InputError(
                        self.path,
                        f"row {row}: bytes that are not valid UTF-8 text",
                        line=line,
                        column=name,
                    ) from exc
            elif isinstance(value, (dict, list)):
                value = json.dumps(value, ensure_ascii=False, default=str)
            elif value is not None and not isinstance(value, str):
                value = str(value)
            out.append(value)
        return out


def _hint(name: str, columns: Sequence[str]) -> str:
    """The option that would find column ``name`` in a header read as ``columns``, if any."""
    if f'"{name}"' in columns:
        return "; the header is quoted: pass --quoting csv"
    if len(columns) != 1:
        return ""
    counts = {char: columns[0].count(char) for char in _DELIMITERS}
    char = max(counts, key=counts.__getitem__)
    if not counts[char]:
        return ""
    kind, option = _DELIMITERS[char]
    return f"; the header looks {kind}-separated: pass --delimiter {option}"


_TEXT_TYPES = frozenset(["string", "large_string"])  # Arrow types whose values are str
_DELIMITERS = {
    ";": ("semicolon", "';'"),
    "|": ("pipe", "'|'"),
    "\t": ("tab", "tab"),
    ",": ("comma", "','"),
}


def _with_images(request: ChatRequest, images: tuple[Image, ...]) -> ChatRequest:
    """``request`` with ``images`` added to its last user message."""
    messages = list(request.messages)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            message = messages[i]
            messages[i] = Message(message.role, message.content, (*message.images, *images))
            break
    else:
        messages.append(Message("user", "", images))
    return dataclasses.replace(request, messages=tuple(messages))


def _column(batch: Batch, name: str) -> list[Any]:
    index = batch.data.schema.get_field_index(name)
    if index < 0:
        return [None] * batch.data.num_rows
    return batch.data.column(index).to_pylist()  # type: ignore[no-any-return]


def _parse_messages(cell: Any) -> list[Message]:
    if cell is None or cell == "":
        return []
    value = cell
    if isinstance(cell, str):
        try:
            value = json.loads(cell)
        except ValueError as exc:
            raise ValueError(f"messages are not valid JSON: {exc}") from exc
    if not isinstance(value, list):
        raise ValueError('messages must be a JSON list of {"role": ..., "content": ...}')
    messages = []
    for position, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ValueError(f"message {position} needs a string 'role' and a 'content'")
        messages.append(Message(item["role"], to_text(item.get("content"))))
    return messages
