"""The genai-prices table's answers kept on disk, so that a run need not import it.

Importing ``genai_prices`` (pydantic, and a 1.6 MB table built into objects) and finding
a model in it takes 95-130 ms (measured, ``gpt-4o-mini``, bytecode compiled) at the start
of every run that prices a model: a cron job or a pipeline step pays it every time,
though the answer depends only on the installed table. :class:`PriceCache` keeps what
:func:`aibatch.jobs.cost.look_up_price` read from the table for each model in
``prices.json`` in the cache folder (:func:`cache_dir`), so that a later run with the
same install reads a small file instead: 0.6 ms in all (6 ms with the first import of
``hashlib`` and ``json``, which a run has made already).

Why an answer read from the file is never a wrong price:

- The file belongs to one install of the table (:func:`find_table`), found without
  importing it: the resolved package folder, the size and modification time (ns) of its
  ``data.py`` (the table) and ``__init__.py``, and its ``.dist-info`` names (the
  version). Reinstalling or upgrading changes them; a file of another install is
  ignored, and replaced whole by the next answer.
- Only answers that cannot change with time are kept: the price of a model with one
  price, or why a model has none. A model whose price changes on a date or with the
  time of day (genai-prices' conditional prices) is looked up in the table every run.
- The file carries a SHA-256 of its content and is read strictly: one that does not
  parse, has another shape, wrong types, a bad checksum, or is owned by another user or
  writable by everyone is ignored, and written anew (whole, by
  :func:`aibatch.files.atomic_write`) the next time a model is looked up. An answer is
  written only when it reads back equal to itself.
- A table replaced in the running process (genai-prices' ``UpdatePrices`` or
  ``set_custom_snapshot``) bypasses the file, both ways.
- An answer is kept only for the install this process imported the table of (the one
  :meth:`PriceCache.open` found before the import): a process that imported it before
  an upgrade on disk, or that aibatch did not see import it, keeps nothing.

The cache is a convenience: a folder that cannot be made or written (a read-only home,
cron without ``HOME``) is logged at debug level and the table is read as without it.
``AIBATCH_CACHE_DIR=off`` (or empty) turns it off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import DIR_MODE, atomic_write
from .cost import Price, Rate

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "FILE_NAME",
    "MAX_ENTRIES",
    "PriceCache",
    "TableKey",
    "cache_dir",
    "canonical",
    "checksum",
    "find_table",
    "lasting",
]

#: the cache folder; empty or ``off`` turns the cache off
CACHE_ENV = "AIBATCH_CACHE_DIR"
FILE_NAME = "prices.json"
FORMAT = 1
#: models kept: past it the oldest entries go
MAX_ENTRIES = 128
# Longer names are looked up but not kept: they would crowd the file out.
MAX_MODEL_CHARS = 256
MAX_FILE_BYTES = 1 << 20
_TABLE_FILES = ("data.py", "__init__.py")
_DIST_PREFIXES = ("genai_prices-", "genai-prices-")
_DIST_SUFFIXES = (".dist-info", ".egg-info")
_TABLE_MODULE = "genai_prices.data"
# the install found last before this process imported the table: the one it holds
_imported: dict[str, TableKey] = {}


def cache_dir() -> Path | None:
    """The folder of aibatch's cache; ``None`` when it is turned off or there is no home.

    ``$AIBATCH_CACHE_DIR`` (empty or ``off``: turned off), else
    ``$XDG_CACHE_HOME/aibatch``, else ``~/.cache/aibatch``.
    """
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        if chosen.strip().lower() in ("", "off"):
            return None
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative path is ignored
        return Path(xdg, "aibatch")
    try:
        return Path.home() / ".cache" / "aibatch"
    except (RuntimeError, KeyError, OSError) as exc:
        log.debug("no home folder for the price cache (%s): prices are not cached", exc)
        return None


@dataclass(frozen=True, slots=True)
class TableKey:
    """One install of the genai-prices table, told apart without importing it.

    Attributes:
        package: the resolved folder of the ``genai_prices`` package.
        files: ``(name, size, st_mtime_ns)`` of its table and its ``__init__.py``.
        dists: the names of its ``.dist-info`` folders beside it (they hold the version).
    """

    package: str
    files: tuple[tuple[str, int, int], ...]
    dists: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The key as JSON values, as the cache file holds it."""
        return {
            "package": self.package,
            "files": [list(item) for item in self.files],
            "dists": list(self.dists),
        }


def find_table() -> TableKey | None:
    """The installed genai-prices table; ``None`` when it is not installed.

    Costs a ``find_spec``, two ``stat`` calls and a listing of its folder (about 0.2 ms):
    nothing is imported.

    Raises:
        OSError: it is installed, but not as files that can be told apart (in a zip
            file, or without a ``data.py``): its answers cannot be cached.
    """
    try:
        spec = importlib.util.find_spec("genai_prices")
    except (ImportError, ValueError) as exc:  # ValueError: a module without __spec__
        raise OSError(f"genai_prices cannot be found: {exc}") from exc
    if spec is None:
        return None
    locations = spec.submodule_search_locations
    if not spec.has_location or not locations:
        raise OSError(f"genai_prices is not a package folder: {spec.origin}")
    package = os.path.realpath(locations[0])
    files = []
    for name in _TABLE_FILES:
        info = os.stat(os.path.join(package, name))
        files.append((name, info.st_size, info.st_mtime_ns))
    folder = os.path.dirname(os.path.abspath(locations[0]))  # where pip put it
    dists = sorted(
        name
        for name in os.listdir(folder)
        if name.startswith(_DIST_PREFIXES) and name.endswith(_DIST_SUFFIXES)
    )
    return TableKey(package, tuple(files), tuple(dists))


def lasting(info: ModelInfo) -> bool:
    """Whether the table gives ``info`` the same price at any time (then it may be kept).

    A model has one price (a ``ModelPrice``), or a list of ``ConditionalPrice`` that
    start on a date or hold at some time of the day: those are looked up every time.
    """
    from genai_prices.types import ModelPrice  # imported by then: ``info`` comes from it

    return isinstance(info.prices, ModelPrice)


def canonical(payload: Any) -> bytes:
    """``payload`` as canonical JSON: keys sorted, no spaces, ASCII, no NaN."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")


def checksum(payload: Any) -> str:
    """The SHA-256 of ``payload``'s :func:`canonical` JSON, as the cache file holds it."""
    return hashlib.sha256(canonical(payload)).hexdigest()


@dataclass(frozen=True, slots=True)
class PriceCache:
    """The kept answers of the installed genai-prices table, as read once.

    Attributes:
        installed: genai-prices is installed (else there is nothing to keep).
        key: the install; ``None`` when it cannot be told apart.
        path: the cache file; ``None`` when answers are not kept: the cache is turned
            off, there is no home folder, the install cannot be told apart, or the
            table was replaced in this process.
        entries: the file's entries as JSON, oldest first (read-only); none when it is
            missing, damaged or of another install. Each is decoded when asked for.
    """

    installed: bool
    key: TableKey | None = None
    path: Path | None = None
    entries: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls) -> PriceCache:
        """The cache of the table installed now, its file read."""
        try:
            key = find_table()
        except OSError as exc:
            log.debug("genai-prices cannot be told apart (%s): prices are not cached", exc)
            return cls(installed=True)
        if key is None:
            return cls(installed=False)
        if _TABLE_MODULE not in sys.modules:
            _imported["table"] = key
        folder = cache_dir()
        if folder is None or _replaced_in_process():
            return cls(installed=True, key=key)
        path = folder / FILE_NAME
        return cls(installed=True, key=key, path=path, entries=_load(path, key))

    def get(self, model: str) -> Price | str | None:
        """The kept answer for ``model``: its price, or why it has none; ``None`` if none."""
        entry = self.entries.get(model)
        if entry is None:
            return None
        try:
            found = _decode(entry)
        except ValueError as exc:  # :meth:`put` then writes the file anew
            log.debug("price cache %s ignored: %s", self.path, exc)
            return None
        log.debug("price of %r read from %s", model, self.path)
        return found

    def put(self, model: str, found: Price | str) -> None:
        """Keep ``found``, the table's lasting answer for ``model``.

        The oldest answers beyond :data:`MAX_ENTRIES` are dropped; all of them if one
        is damaged. Never raises: a file not written is logged (debug level).
        """
        if self.path is None or self.key is None or len(model) > MAX_MODEL_CHARS:
            return
        if _imported.get("table") != self.key:  # the table in memory is another one
            log.debug("the price of %r is not cached: the table loaded is not %s", model, self.key)
            return
        try:
            entry = _encode(found)
            if _decode(json.loads(canonical(entry))) != found:
                raise ValueError("it does not read back equal")
        except (ValueError, TypeError) as exc:
            log.debug("the price of %r is not cached: %s", model, exc)
            return
        kept = dict(self.entries)
        try:
            for value in kept.values():
                _decode(value)
        except ValueError as exc:
            log.debug("price cache %s ignored: %s", self.path, exc)
            kept = {}
        kept.pop(model, None)
        kept[model] = entry
        pairs = [[name, value] for name, value in kept.items()][-MAX_ENTRIES:]
        payload = canonical({"table": self.key.to_json(), "entries": pairs})
        digest = hashlib.sha256(payload).hexdigest()
        data = b'{"format":%d,"payload":%s,"sha256":"%s"}' % (FORMAT, payload, digest.encode())
        temp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            with atomic_write(self.path, temp=temp) as handle:
                handle.write(data)
        except OSError as exc:
            log.debug("price cache %s not written: %s", self.path, exc)


def _replaced_in_process() -> bool:
    """Whether this process set its own genai-prices table (then the file is bypassed)."""
    snapshots = sys.modules.get("genai_prices.data_snapshot")
    return getattr(snapshots, "_custom_snapshot", None) is not None


def _load(path: Path, key: TableKey) -> dict[str, Any]:
    """The entries of the cache file ``path`` of ``key``'s install; none if it is not one."""
    try:
        return _parse(_read(path), key)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.debug("price cache %s not read: %s", path, exc)
    except (ValueError, TypeError, RecursionError) as exc:
        log.debug("price cache %s ignored: %s", path, exc)
    return {}


def _read(path: Path) -> bytes:
    # O_NONBLOCK: a FIFO put there must not hang the run; it is refused below.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise OSError(f"owned by user {info.st_uid}, not this one")
        if info.st_mode & stat.S_IWOTH:
            raise OSError("writable by everyone")
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES} bytes")
    return data


def _parse(data: bytes, key: TableKey) -> dict[str, Any]:
    """The entries, by model, of a cache file of ``key``'s install (not decoded yet).

    Raises:
        ValueError: the file is not one (JSON, shape, checksum) or of another install.
    """
    content = json.loads(data)
    if not isinstance(content, dict) or content.keys() != {"format", "payload", "sha256"}:
        raise ValueError("not a price cache")
    if content["format"] != FORMAT:
        raise ValueError(f"format {content['format']!r}, not {FORMAT}")
    payload = content["payload"]
    if checksum(payload) != content["sha256"]:
        raise ValueError("checksum mismatch")
    if not isinstance(payload, dict) or payload.keys() != {"table", "entries"}:
        raise ValueError("not a price cache")
    if payload["table"] != key.to_json():
        raise ValueError("another install of genai-prices")
    pairs = payload["entries"]
    if not isinstance(pairs, list) or len(pairs) > MAX_ENTRIES:
        raise ValueError("not a price cache")
    entries: dict[str, Any] = {}
    for pair in pairs:
        match pair:
            case [str() as model, dict() as entry] if model not in entries:
                entries[model] = entry
            case _:
                raise ValueError(f"not an entry: {pair!r:.200}")
    return entries


def _encode(found: Price | str) -> dict[str, Any]:
    if isinstance(found, str):
        return {"none": found}
    if found.share != 1:
        raise ValueError("a share of the price is not the table's answer")
    return {
        "input": _encode_rate(found.input),
        "output": _encode_rate(found.output),
        "per_request": found.per_request,
        "source": found.source,
    }


def _encode_rate(rate: Rate) -> dict[str, Any]:
    return {"base": rate.base, "tiers": [[start, price] for start, price in rate.tiers]}


def _decode(entry: Any) -> Price | str:
    match entry:
        case {"none": str() as why} if len(entry) == 1:
            return why
        case {
            "input": rate_in,
            "output": rate_out,
            "per_request": float() as per_request,
            "source": str() as source,
        } if len(entry) == 4:
            return Price(
                input=_decode_rate(rate_in),
                output=_decode_rate(rate_out),
                per_request=per_request,
                source=source,
            )
    raise ValueError(f"not a price: {entry!r:.200}")


def _decode_rate(value: Any) -> Rate:
    match value:
        case {"base": float() as base, "tiers": list() as tiers} if len(value) == 2:
            return Rate(base, tuple(_decode_tier(tier) for tier in tiers))
    raise ValueError(f"not a rate: {value!r:.200}")


def _decode_tier(value: Any) -> tuple[int, float]:
    match value:
        case [int() as start, float() as price] if type(start) is int:  # not a bool
            return start, price
    raise ValueError(f"not a tier: {value!r:.200}")
