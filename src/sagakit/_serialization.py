"""How durable stores turn step results, events and saga arguments into text.

JSON by default, with tagged objects for the types JSON lacks (dataclasses, enums,
datetimes, decimals, UUIDs, tuples, sets, bytes, dicts with non-string keys), so a
value read back has the class it was stored with. Other types need a codec
(:func:`register_codec`). Pickle is never used unless a serializer is built with
``allow_pickle=True``: unpickling data read from a database runs code.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib
import json
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, cast
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .exceptions import SerializationError, error_text

DEFAULT_MAX_SIZE = 1 << 20
"""Largest stored value, in bytes of encoded text (1 MiB)."""

MAX_DEPTH = 200
"""Deepest nesting of a stored value: lists, dicts, tuples, sets, dataclasses, enums and
coded or tagged objects each count one level. Reading a value back takes up to three
Python frames per level (a tuple is a tagged JSON object holding a list), so a deeper
one could be written but then not read back under the default recursion limit of 1000.
"""

_TAG = "__sk__"
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=True)
_DECODER = json.JSONDecoder()


def _unencodable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder behind _ENCODER, made once (JSONEncoder.encode builds one per call).
# No circular-reference markers: values reach it after _plain() (which refuses
# nesting deeper than 8) or as the fresh, acyclic output of _encode().
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER: Callable[[Any, int], Iterable[str]] | None = (
    None
    if _make_encoder is None
    else _make_encoder(
        None,
        _unencodable,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
)


def _to_json(value: Any) -> str:
    """``_ENCODER.encode(value)``, through the prebuilt C encoder when there is one."""
    return "".join(_json_chunks(value, 0))


def _python_chunks(value: Any, _indent: int) -> tuple[str]:  # pragma: no cover - CPython's is C
    return (_ENCODER.encode(value),)


_json_chunks: Callable[[Any, int], Iterable[str]] = (
    _python_chunks if _C_ENCODER is None else _C_ENCODER
)
"""``value`` as JSON text in chunks (the prebuilt C encoder when there is one): what
:meth:`JsonSerializer.dumps` joins itself, one Python call fewer per value."""


_PRIMITIVES = (str, int, float, bool, type(None))
_BUILT_IN = (*_PRIMITIVES, list, dict, tuple)  # stored before any codec is looked up
# Built-in types whose instances hold contents of their own: a dataclass subclassing one
# would be stored by its fields only, and read back without them.
_CONTAINING = (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex)


T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How to store values of one type: ``encode`` to JSON-able data, ``decode`` back."""

    type: type[T]
    name: str
    encode: Callable[[T], Any]
    decode: Callable[[Any], T]

    if not TYPE_CHECKING:
        # ``Codec[Money](...)`` as a plain generic alias makes it: typing's alias sets
        # ``__orig_class__`` on the new codec, which a frozen slotted dataclass refuses with
        # a TypeError on Python 3.11 and 3.12 (the C alias ignores that refusal).
        __class_getitem__ = classmethod(GenericAlias)


# Copy-on-write: register_codec() builds a new dict under the lock and swaps it in with one
# assignment; a published dict is never changed again. Readers take no lock: each reads the
# one reference once, so a registration in another thread can neither change a dict a
# serializer is iterating ("dictionary changed size during iteration" failing a step) nor
# hide a codec it is replacing from a lookup.
_codecs_lock = threading.Lock()
_global_codecs: dict[str, Codec[Any]] = {}


def _type_name(cls: type) -> str:
    module = cls.__module__
    if module == "__main__":
        module = _main_name()
    return f"{module}:{cls.__qualname__}"


@functools.cache
def _main_name() -> str:
    """The name other processes import the running script by, for the classes it defines
    (``__main__`` is another module in each of them): ``app`` for ``python app.py``
    (from the script's directory, on ``sys.path``), ``pkg.app`` for ``python -m
    pkg.app``. ``__main__`` where there is none (``python -c``, a notebook)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and isinstance(spec.name, str) and spec.name:
        return spec.name
    file = getattr(main, "__file__", None)
    if isinstance(file, str) and file.endswith(".py"):
        stem = os.path.basename(file)[:-3]
        folder = os.path.dirname(os.path.abspath(file))
        if stem.isidentifier() and any(
            os.path.abspath(entry or os.curdir) == folder for entry in sys.path
        ):
            return stem
    return "__main__"


_findable: dict[type, str] = {}  # classes checked by _importable_name, with their names


def _importable_name(cls: type) -> str:
    """:func:`_type_name` of a class that :func:`_resolve` can find again."""
    name = _findable.get(cls)
    if name is not None:
        return name
    if "<locals>" in cls.__qualname__:
        raise SerializationError(
            f"{cls.__module__}.{cls.__qualname__} is defined inside a function, so it cannot "
            "be imported to read the value back; define it at module level or register a codec"
        )
    name = _type_name(cls)
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    # The class itself, or one of the same name (its module was reloaded) reads it back.
    if found is not cls and not (isinstance(found, type) and _type_name(found) == name):
        if cls.__module__ == "types" and dataclasses.is_dataclass(cls):
            # make_dataclass() before Python 3.12 (no module=) leaves its class there.
            raise SerializationError(
                f"{cls.__module__}.{cls.__qualname__} was made by make_dataclass(), which "
                "before Python 3.12 puts the class in module 'types', where it cannot be "
                "found again to read the value back; give it the name it is assigned to "
                f"and set its module after making it, {cls.__qualname__}.__module__ = "
                "__name__ (from Python 3.12: make_dataclass(..., module=__name__)), or "
                "register a codec"
            )
        raise SerializationError(
            f"{cls.__module__}.{cls.__qualname__} cannot be found again by that name (its "
            "module has no such attribute; was it made by make_dataclass() or Enum() under "
            "another name?), so the value could not be read back; give the class the name "
            "it is assigned to, or register a codec"
        )
    _findable[cls] = name
    return name


def _check_codec(
    where: str, cls: object, encode: object, decode: object, name: object, *, named: bool
) -> None:
    """Refuse a codec that could never be used, or not as its fields say."""
    if not isinstance(cls, type):
        raise SerializationError(f"{where} takes a class, got {cls!r}")
    if not callable(encode) or not callable(decode):
        raise SerializationError(f"{where} needs callable encode= and decode=")
    if cls in _BUILT_IN:
        raise SerializationError(
            f"{where} cannot take {cls.__name__}: sagakit stores {cls.__name__} values "
            "itself, before any codec is asked; register a codec for a class of your own"
        )
    if (named or name is not None) and (not isinstance(name, str) or not name):
        raise SerializationError(f"a codec name must be a non-empty string, got {name!r}")


def _name_clash(name: str, taken: type, cls: type) -> SerializationError:
    return SerializationError(
        f"the codec name {name!r} is taken by {_type_name(taken)}: values logged under it "
        f"would be read back as the wrong class; give {_type_name(cls)} a name= of its own"
    )


def register_codec(
    cls: type[T],
    *,
    encode: Callable[[T], Any],
    decode: Callable[[Any], T],
    name: str | None = None,
) -> Codec[T]:
    """Teach every serializer to store ``cls``: ``encode(obj)`` gives JSON-able data.

    ``name`` (default ``"module:QualName"``) is what the log records; keep it stable
    across renames so old logs still decode.
    """
    _check_codec("register_codec()", cls, encode, decode, name, named=False)
    codec = Codec(cls, name or _type_name(cls), encode, decode)
    global _global_codecs
    with _codecs_lock:
        codecs = dict(_global_codecs)  # copy-on-write (see _global_codecs)
        taken = codecs.pop(codec.name, None)
        if taken is not None and _type_name(taken.type) != _type_name(cls):
            raise _name_clash(codec.name, taken.type, cls)
        # Last, so that a class registered under a new name (a rename: the old name
        # still reads old logs) is stored under the newest one.
        codecs[codec.name] = codec
        _global_codecs = codecs
    return codec


def _resolve(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    try:
        if module_name == _main_name():  # stored by this very script (see _type_name)
            module_name = "__main__"
        try:
            target: Any = importlib.import_module(module_name)
        except SystemExit as exited:
            # A script's sys.exit() (or argparse reading the reader's command line) at
            # import: it would end the reading process (`sagakit show`, a worker).
            raise ImportError(
                f"its module exits when imported ({error_text(exited)})", name=module_name
            ) from exited
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as error:
        if name.startswith("__main__:"):
            raise SerializationError(
                f"stored value has type {name!r}, which cannot be imported ({error}): a "
                "class of the script (or notebook) that wrote it, run as __main__, which "
                "no other process can import; only that script, run again, reads it back"
            ) from error
        raise SerializationError(
            f"stored value has type {name!r}, which cannot be imported ({error}); "
            "import the module defining it, or, if the class was renamed or moved since, "
            f"keep its old name as an alias (`{qualname} = NewName` in module {module_name})"
        ) from error
    return target


def _name(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether plain ``json.dumps`` round-trips ``value`` exactly (the fast path)."""
    cls = value.__class__
    if cls is str or cls is int or cls is bool or value is None:
        return True
    if cls is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if depth > 8:
        return False
    if cls is dict:
        if _TAG in value:
            return False
        for key, item in value.items():
            if key.__class__ is not str:
                return False
            leaf = item.__class__
            if leaf is str or leaf is int or leaf is bool or item is None:
                continue  # the common leaves, without a call
            if not _plain(item, depth + 1):
                return False
        return True
    if cls is list:
        for item in value:  # (a loop, not all() over a generator: a call fewer per item)
            leaf = item.__class__
            if leaf is str or leaf is int or leaf is bool or item is None:
                continue
            if not _plain(item, depth + 1):
                return False
        return True
    return False


_TOO_DEEP_TO_READ = (
    "stored value is nested too deeply to read back (sagakit writes none deeper than "
    f"{MAX_DEPTH} levels: the log was written by another program, or is corrupt)"
)


class _TooDeep(Exception):
    """Raised by :meth:`JsonSerializer._encode` at a level deeper than :data:`MAX_DEPTH`."""


_Path: TypeAlias = tuple[str, Any, Any]
"""(segment, the object it leads into, the parent's path) in :func:`_too_deep_path`."""


def _too_deep_path(serializer: JsonSerializer, value: Any) -> tuple[str, bool]:
    """Where ``value`` first nests deeper than :data:`MAX_DEPTH` (``[0]['a'].field``), and
    whether that is because it contains itself; for the error only, so it walks the value
    again the way ``_encode`` does, without recursion."""
    stack: list[tuple[Any, int, _Path | None]] = [(value, 0, None)]
    while stack:
        item, depth, where = stack.pop()
        cls = item.__class__
        if cls in _PRIMITIVES:
            continue
        if depth >= MAX_DEPTH:
            steps: list[tuple[str, Any]] = []
            while where is not None:
                steps.append((where[0], where[1]))
                where = where[2]
            steps.reverse()
            seen = {id(value)}
            for count, (_, reached) in enumerate(steps, 1):
                if id(reached) in seen:  # back at an object holding it: name the loop
                    return "".join(segment for segment, _ in steps[:count]), True
                seen.add(id(reached))
            segments = [segment for segment, _ in steps]
            if len(segments) > 8:
                segments[4:-3] = ["..."]
            return "".join(segments), False
        children: list[tuple[str, Any]] = []
        if cls is list or cls is tuple:
            children = [(f"[{i}]", child) for i, child in enumerate(item)]
        elif cls is dict:
            for key, child in item.items():
                if key.__class__ is not str:
                    children.append((f"<key {key!r:.40}>", key))
                children.append((f"[{key!r:.40}]", child))
        elif cls is set or cls is frozenset:
            children = [(f"<item {child!r:.40}>", child) for child in item]
        elif (codec := serializer._codec_for(cls)) is not None:
            children = [(f"<{codec.name} codec>", codec.encode(item))]
        elif isinstance(item, Enum):
            children = [(".value", item.value)]
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            children = [(f".{f.name}", getattr(item, f.name)) for f in dataclasses.fields(item)]
        stack.extend((child, depth + 1, (name, child, where)) for name, child in children[::-1])
    return "<unknown>", False  # pragma: no cover - a codec encoding differently each time


def _clock(value: datetime | time, tag: str) -> dict[str, Any]:
    """A tagged ``datetime`` or ``time``: its ISO text, and what that text loses."""
    data: dict[str, Any] = {_TAG: tag, "v": value.isoformat()}
    zone = value.tzinfo
    if isinstance(zone, ZoneInfo) and zone.key:  # keep the zone, not only its offset
        data["z"] = zone.key
    elif isinstance(zone, timezone):  # final: no subclass to tell apart
        name = zone.tzname(None)
        if name != timezone(zone.utcoffset(None)).tzname(None):
            data["n"] = name  # timezone(offset, "EST"): the text keeps only the offset
    elif zone is not None and zone.utcoffset(None) is None:
        # A zone with rules (pytz's, dateutil's: no offset without a date). A fixed one
        # (pytz.utc, dateutil.tz.tzutc(), tzoffset) comes back as that datetime.timezone.
        raise SerializationError(
            f"{value!r} has a {type(zone).__module__}.{type(zone).__qualname__} time zone, "
            "which would come back as a fixed offset (its daylight-saving rules lost); use "
            "zoneinfo.ZoneInfo(...) or datetime.timezone, or register a codec for "
            f"{type(value).__name__}"
        )
    # The text has no fold; a zone's offset tells it for a datetime, not for a time.
    if value.fold and not (tag == "datetime" and "z" in data):
        data["f"] = 1
    return data


def _rebuild_dataclass(cls: type, stored: dict[str, Any]) -> Any:
    """The dataclass instance with the ``stored`` field values, as it was stored.

    ``__init__`` is not called again (like ``copy`` and ``pickle``): a
    ``__post_init__`` would transform the values a second time, and ``InitVar``
    arguments are not fields, so they were never stored.
    """
    obj = cast(Any, cls).__new__(cls)
    for field in dataclasses.fields(cls):
        if field.name in stored:
            item = stored.pop(field.name)
        elif field.default is not dataclasses.MISSING:
            item = field.default
        elif field.default_factory is not dataclasses.MISSING:
            item = field.default_factory()
        else:
            raise SerializationError(
                f"stored {cls.__qualname__} has no value for its field {field.name!r} "
                "(the class gained a field without a default since it was stored)"
            )
        object.__setattr__(obj, field.name, item)
    if stored:
        raise SerializationError(
            f"stored {cls.__qualname__} has fields the class no longer has: "
            f"{', '.join(sorted(stored))}"
        )
    return obj


_Clock = TypeVar("_Clock", datetime, time)


def _unzoned(clock: _Clock, data: dict[str, Any]) -> _Clock:
    """``clock`` read from its ISO text, given back the name and fold :func:`_clock` kept."""
    zone = clock.tzinfo
    if "n" in data and isinstance(zone, timezone):
        clock = clock.replace(tzinfo=timezone(zone.utcoffset(None), data["n"]))
    if data.get("f"):
        clock = clock.replace(fold=1)
    return clock


class JsonSerializer:
    """JSON with type tags; the default serializer of durable stores.

    ``codecs`` add types on top of the global :func:`register_codec` ones;
    ``max_size`` bounds each stored value (a larger one raises
    :class:`~sagakit.SerializationError`); ``allow_pickle`` stores otherwise
    unsupported objects with pickle and reads them back — enable it only for a
    database no one else can write.
    """

    __slots__ = ("_codecs", "_decoders", "allow_pickle", "max_size")

    allow_pickle: bool
    max_size: int

    def __init__(
        self,
        *,
        codecs: Iterable[Codec[Any]] = (),
        max_size: int = DEFAULT_MAX_SIZE,
        allow_pickle: bool = False,
    ) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0:
            raise SerializationError(
                f"max_size must be a positive number of bytes, got {max_size!r}"
            )
        self.max_size = max_size
        if not isinstance(allow_pickle, bool):  # bool("no") is True: pickle turned on
            raise SerializationError(f"allow_pickle must be True or False, got {allow_pickle!r}")
        self.allow_pickle = allow_pickle
        if isinstance(codecs, Codec):
            raise SerializationError("codecs must be a list of Codec objects: codecs=[codec]")
        try:
            if isinstance(codecs, str | bytes):  # a list of its characters
                raise TypeError(codecs)
            self._codecs = tuple(codecs)
        except TypeError:
            raise SerializationError(
                f"codecs must be a list of Codec objects, got {codecs!r}: codecs=[codec]"
            ) from None
        self._decoders: dict[str, Codec[Any]] = {}
        for codec in self._codecs:
            if not isinstance(codec, Codec):
                shown = codec.__name__ if isinstance(codec, type) else repr(codec)
                raise SerializationError(
                    f"codecs must be sagakit Codec objects, got {shown}; make one with "
                    "Codec(cls, name, encode, decode)"
                )
            _check_codec("Codec", codec.type, codec.encode, codec.decode, codec.name, named=True)
            # Decoding takes this codec's name before a global one's: a clash with either
            # would read values of one class back as the other.
            taken = self._decoders.get(codec.name) or _global_codecs.get(codec.name)
            if taken is not None and _type_name(taken.type) != _type_name(codec.type):
                raise _name_clash(codec.name, taken.type, codec.type)
            self._decoders.setdefault(codec.name, codec)

    # ------------------------------------------------------------- encoding

    def dumps(self, value: Any, *, what: str | Callable[[], str] = "value") -> str:
        """Encode ``value`` as text; :class:`SerializationError` names what failed.

        ``what`` may be a function giving that name, called only on failure.
        """
        cls = value.__class__
        try:
            if cls is str or cls is int or cls is bool or value is None or _plain(value):
                # (_to_json(), inline.) ValueError: an int too long to write as text
                text = "".join(_json_chunks(value, 0))
            else:
                text = "".join(_json_chunks(self._encode(value), 0))
        except SerializationError as error:
            raise SerializationError(f"cannot store {_name(what)}: {error}") from error.__cause__
        except _TooDeep:
            path, cyclic = _too_deep_path(self, value)
            if cyclic:
                problem = "it contains itself (an object that refers back to one holding it)"
                fix = "store an id in place of the back-reference"
            else:
                problem = f"it nests more than {MAX_DEPTH} levels deep"
                fix = "flatten it, or store an id in place of the deeply nested part"
            raise SerializationError(
                f"cannot store {_name(what)}: {problem}, at {path}, so it could not be read "
                f"back from the log; {fix}"
            ) from None
        except RecursionError as error:
            raise SerializationError(
                f"cannot store {_name(what)}: it contains itself (an object that refers back "
                "to one holding it) or is nested too deeply; store an id in place of the "
                "back-reference"
            ) from error
        except Exception as error:  # a codec's own bug (AttributeError, ...) too
            raise SerializationError(f"cannot store {_name(what)}: {error}") from error
        if len(text) > self.max_size and len(text.encode()) > self.max_size:
            raise SerializationError(
                f"cannot store {_name(what)}: it takes {len(text.encode())} bytes, more than the "
                f"limit of {self.max_size}; store an id, not the whole object, or raise the "
                "store's max_size"
            )
        return text

    def _encode(self, value: Any, depth: int = 0) -> Any:
        cls = value.__class__
        if cls in _PRIMITIVES:
            return value
        if depth >= MAX_DEPTH:
            raise _TooDeep
        depth += 1
        if cls is list:
            return [self._encode(item, depth) for item in value]
        if cls is dict:
            if all(key.__class__ is str for key in value) and _TAG not in value:
                return {key: self._encode(item, depth) for key, item in value.items()}
            return {
                _TAG: "dict",
                "v": [[self._encode(k, depth), self._encode(v, depth)] for k, v in value.items()],
            }
        if cls is tuple:
            return {_TAG: "tuple", "v": [self._encode(item, depth) for item in value]}
        codec = self._codec_for(cls)
        if codec is not None:
            return {_TAG: "codec", "t": codec.name, "v": self._encode(codec.encode(value), depth)}
        if isinstance(value, type):
            # A class by its importable name: the ``cls`` a @classmethod saga is called with.
            return {_TAG: "class", "t": _importable_name(value)}
        if isinstance(value, Enum):
            return {_TAG: "enum", "t": _importable_name(cls), "v": self._encode(value.value, depth)}
        if dataclasses.is_dataclass(value):  # an instance: classes returned above
            if isinstance(value, _CONTAINING):
                base = next(b for b in _CONTAINING if isinstance(value, b)).__name__
                raise SerializationError(
                    f"{cls.__module__}.{cls.__qualname__} is a dataclass and a {base}: only "
                    f"its fields would be stored, not the {base}'s own contents; register a "
                    "codec for it, or keep the contents in a field"
                )
            fields = {
                field.name: self._encode(getattr(value, field.name), depth)
                for field in dataclasses.fields(value)
            }
            return {_TAG: "dataclass", "t": _importable_name(cls), "v": fields}
        if cls is datetime or cls is time:
            return _clock(value, "datetime" if cls is datetime else "time")
        if cls is date:
            return {_TAG: "date", "v": value.isoformat()}
        if cls is timedelta:
            return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if cls is Decimal:
            return {_TAG: "decimal", "v": str(value)}
        if cls is UUID:
            return {_TAG: "uuid", "v": str(value)}
        if cls is bytes:
            return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
        if cls is set or cls is frozenset:
            items = [self._encode(item, depth) for item in value]
            return {_TAG: cls.__name__, "v": items}
        if self.allow_pickle:
            return {_TAG: "pickle", "v": base64.b64encode(pickle.dumps(value)).decode("ascii")}
        raise SerializationError(
            f"{cls.__module__}.{cls.__qualname__} objects cannot be stored as JSON; "
            "make it a dataclass, register a codec with sagakit.register_codec(), "
            "or pass plain data (str, int, float, bool, None, lists and dicts of them)"
        )

    def _codec_for(self, cls: type) -> Codec[Any] | None:
        for codec in self._codecs:
            if codec.type is cls:
                return codec
        # The newest registration first; _global_codecs is read once, and the dict it
        # names never changes (copy-on-write): a registration meanwhile is not seen.
        for codec in reversed(_global_codecs.values()):
            if codec.type is cls:
                mine = self._decoders.get(codec.name)
                if mine is not None and _type_name(mine.type) != _type_name(cls):
                    # registered after this serializer was built: this one would read it back
                    raise _name_clash(codec.name, mine.type, cls)
                return codec
        return None

    # ------------------------------------------------------------- decoding

    def loads(self, text: str | bytes) -> Any:
        """Decode text written by :meth:`dumps`."""
        # RecursionError: deeper than MAX_DEPTH, which sagakit never writes (another
        # program's value, or a corrupt one).
        try:
            data = _DECODER.decode(text if isinstance(text, str) else text.decode())
        except ValueError as error:
            raise SerializationError(f"stored value is not valid JSON: {error}") from error
        except RecursionError:
            raise SerializationError(_TOO_DEEP_TO_READ) from None
        try:
            return self._decode(data)
        except RecursionError:
            raise SerializationError(_TOO_DEEP_TO_READ) from None

    def _decode(self, data: Any) -> Any:
        cls = data.__class__
        if cls is list:
            return [self._decode(item) for item in data]
        if cls is not dict:
            return data
        tag = data.get(_TAG)
        if tag is None:
            return {key: self._decode(item) for key, item in data.items()}
        value = data.get("v")
        try:
            return self._decode_tagged(tag, data, value)
        except (SerializationError, RecursionError):  # (loads() names a RecursionError)
            raise
        except Exception as error:
            raise SerializationError(f"cannot read stored {tag} value: {error}") from error

    def _decode_tagged(self, tag: str, data: dict[str, Any], value: Any) -> Any:
        if tag == "tuple":
            return tuple([self._decode(item) for item in value])  # no generator frame
        if tag == "dict":
            return {self._decode(k): self._decode(v) for k, v in value}
        if tag == "codec":
            name = data["t"]
            registered = _global_codecs  # one reference: never changed (copy-on-write)
            codec = self._decoders.get(name) or registered.get(name)
            if codec is None and name.startswith("__main__:"):
                # Stored by this script before its classes were named by module.
                alias = f"{_main_name()}:{name.removeprefix('__main__:')}"
                codec = self._decoders.get(alias) or registered.get(alias)
            if codec is None:
                raise SerializationError(
                    f"stored value uses codec {name!r}, which is not registered here; "
                    "register it with sagakit.register_codec(..., name=...) before reading"
                )
            return codec.decode(self._decode(value))
        if tag == "enum":
            enum_cls = _resolve(data["t"])
            if not (isinstance(enum_cls, type) and issubclass(enum_cls, Enum)):
                raise SerializationError(f"stored enum type {data['t']!r} is not an Enum")
            return enum_cls(self._decode(value))
        if tag == "class":
            found = _resolve(data["t"])
            if not isinstance(found, type):
                raise SerializationError(f"stored class {data['t']!r} is not a class")
            return found
        if tag == "dataclass":
            dc_cls = _resolve(data["t"])
            if not (isinstance(dc_cls, type) and dataclasses.is_dataclass(dc_cls)):
                raise SerializationError(f"stored dataclass type {data['t']!r} is not a dataclass")
            return _rebuild_dataclass(dc_cls, {k: self._decode(v) for k, v in value.items()})
        if tag == "datetime":
            moment = datetime.fromisoformat(value)
            if "z" not in data:
                return _unzoned(moment, data)
            try:
                zone = ZoneInfo(data["z"])
            except (ZoneInfoNotFoundError, ValueError):  # no such zone here: keep the offset
                return moment
            offset = moment.utcoffset()
            for fold in (0, 1):  # the stored wall time, even one the zone skips or repeats
                local = moment.replace(tzinfo=zone, fold=fold)
                if local.utcoffset() == offset:
                    return local
            return moment.astimezone(zone)  # the zone's rules changed: the same instant
        if tag == "date":
            return date.fromisoformat(value)
        if tag == "time":
            clock = _unzoned(time.fromisoformat(value), data)
            if "z" not in data:
                return clock
            try:
                return clock.replace(tzinfo=ZoneInfo(data["z"]))
            except (ZoneInfoNotFoundError, ValueError):  # no such zone here: naive
                return clock
        if tag == "timedelta":
            return timedelta(days=value[0], seconds=value[1], microseconds=value[2])
        if tag == "decimal":
            return Decimal(value)
        if tag == "uuid":
            return UUID(value)
        if tag == "bytes":
            return base64.b64decode(value)
        if tag == "set":
            return {self._decode(item) for item in value}
        if tag == "frozenset":
            return frozenset([self._decode(item) for item in value])
        if tag == "pickle":
            if not self.allow_pickle:
                raise SerializationError(
                    "stored value is pickled; refusing to unpickle data read from a database. "
                    "Pass allow_pickle=True to the serializer only if you trust every writer"
                )
            return pickle.loads(base64.b64decode(value))  # explicit opt-in
        raise SerializationError(f"stored value has unknown type tag {tag!r}")

    def __repr__(self) -> str:
        pickle_note = " allow_pickle" if self.allow_pickle else ""
        return f"<JsonSerializer max_size={self.max_size}{pickle_note}>"


__all__ = ["DEFAULT_MAX_SIZE", "MAX_DEPTH", "Codec", "JsonSerializer", "register_codec"]
