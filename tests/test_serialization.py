"""The JSON serializer of durable stores: round trips, codecs, limits, no pickle."""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import sys
from dataclasses import InitVar, dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from sagakit import Codec, JsonSerializer, SerializationError, register_codec


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


@dataclass
class Transferred:
    source: str
    money: Money
    tags: tuple[str, ...] = ()
    at: datetime | None = None
    computed: int = field(default=0, init=False)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class Opaque:
    pass


VALUES = [
    None,
    True,
    3,
    2.5,
    "text",
    [1, "a", None],
    {"a": 1, "b": [2]},
    (1, (2, 3)),
    {1: "one", (2, 3): "pair"},
    {"__sk__": "not a tag"},
    Color.BLUE,
    Level.LOW,
    datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5),
    date(2026, 1, 2),
    time(3, 4, 5),
    timedelta(days=1, seconds=2, microseconds=3),
    Decimal("10.05"),
    UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xffbytes",
    {1, 2},
    frozenset({"x"}),
    Money(Decimal("1.10"), "EUR"),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip_keeps_value_and_class(value: object) -> None:
    serializer = JsonSerializer()
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert type(back) is type(value)


def test_nested_dataclass_round_trips_with_non_init_fields() -> None:
    serializer = JsonSerializer()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = Transferred("A", Money(Decimal("5"), "USD"), ("x", "y"), at)
    event.computed = 7
    back = serializer.loads(serializer.dumps(event))
    assert back == event
    assert isinstance(back.money, Money)
    assert back.tags == ("x", "y")
    assert back.computed == 7


def test_unsupported_type_names_the_fix() -> None:
    with pytest.raises(SerializationError, match=r"Opaque objects cannot be stored.*codec"):
        JsonSerializer().dumps({"x": Opaque()}, what="the result of step 0")


@pytest.mark.parametrize(
    "value", [10**5000, {"balance": 10**5000}, [1, 10**5000]], ids=["int", "in-dict", "in-list"]
)
def test_an_int_too_long_for_json_is_a_serialization_error(value: object) -> None:
    # Python refuses to write an int of more than 4300 digits as text: a plain
    # ValueError escaped before, and failed the step without naming what failed.
    with pytest.raises(SerializationError, match=r"cannot store the result of step 0.*4300"):
        JsonSerializer().dumps(value, what="the result of step 0 ('count')")


class Meter:
    pass


def test_a_codec_that_raises_is_a_serialization_error_naming_the_value() -> None:
    # An AttributeError from a codec's encode escaped as itself, naming nothing.
    codec = Codec(Meter, "meter", encode=lambda m: m.missing, decode=lambda v: Meter())
    serializer = JsonSerializer(codecs=[codec])
    with pytest.raises(SerializationError, match=r"cannot store the result of step 2.*missing"):
        serializer.dumps(Meter(), what="the result of step 2 ('measure')")


def test_registered_codec_round_trips_under_its_name() -> None:
    register_codec(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), name="point")
    serializer = JsonSerializer()
    text = serializer.dumps([Point(1, 2)])
    assert '"point"' in text
    assert serializer.loads(text) == [Point(1, 2)]


def test_per_serializer_codec_unknown_elsewhere() -> None:
    local = Codec(Opaque, "opaque", lambda o: None, lambda v: Opaque())
    text = JsonSerializer(codecs=[local]).dumps(Opaque())
    assert isinstance(JsonSerializer(codecs=[local]).loads(text), Opaque)
    with pytest.raises(SerializationError, match=r"codec .opaque.*not registered"):
        JsonSerializer().loads(text)


def test_a_codec_is_generic_and_made_through_its_alias() -> None:
    # Codec[T] types encode and decode by the class (tests/typing/test_types.py); made
    # through the alias it is the same codec (typing's alias set __orig_class__ on the
    # frozen slotted codec: a TypeError on Python 3.11 and 3.12).
    typed = Codec[Opaque](Opaque, "opaque", lambda o: None, lambda v: Opaque())
    assert typed == Codec(Opaque, "opaque", typed.encode, typed.decode)
    assert Codec[Opaque] == Codec[Opaque]
    assert isinstance(
        JsonSerializer(codecs=[typed]).loads(JsonSerializer(codecs=[typed]).dumps(Opaque())), Opaque
    )


def test_size_limit_gives_a_clear_error() -> None:
    serializer = JsonSerializer(max_size=100)
    serializer.dumps("x" * 50)
    with pytest.raises(SerializationError, match=r"more than the limit of 100"):
        serializer.dumps("x" * 200, what="the result of step 1 ('fetch')")


def test_pickle_only_with_explicit_opt_in() -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().dumps(Opaque())
    trusting = JsonSerializer(allow_pickle=True)
    text = trusting.dumps(Opaque())
    assert isinstance(trusting.loads(text), Opaque)
    with pytest.raises(SerializationError, match="refusing to unpickle"):
        JsonSerializer().loads(text)


@pytest.mark.parametrize("setting", ["no", "false", 1, None])
def test_allow_pickle_takes_only_true_or_false(setting: object) -> None:
    # Its truth was taken: allow_pickle="no" (from a configuration file) turned pickle on.
    with pytest.raises(SerializationError, match="allow_pickle must be True or False"):
        JsonSerializer(allow_pickle=setting)  # type: ignore[arg-type]


def test_forged_pickle_is_never_loaded_by_default() -> None:
    import base64
    import json

    forged = json.dumps({"__sk__": "pickle", "v": base64.b64encode(pickle.dumps(1)).decode()})
    with pytest.raises(SerializationError, match="refusing to unpickle"):
        JsonSerializer().loads(forged)


@pytest.mark.parametrize("cls", [Opaque, Money, Color, Point], ids=lambda c: c.__name__)
def test_a_class_round_trips_by_its_importable_name(cls: type) -> None:
    # A @classmethod saga is called with its class first, which a durable log records
    # with its arguments: it was refused ("Opaque objects cannot be stored as JSON; make
    # it a dataclass ..." for the class itself), so no class method saga ran on one.
    serializer = JsonSerializer()
    text = serializer.dumps([cls, {"cls": cls}])
    assert serializer.loads(text) == [cls, {"cls": cls}]


def test_a_class_defined_in_a_function_is_refused_naming_the_fix() -> None:
    class Local:
        pass

    with pytest.raises(SerializationError, match=r"defined inside a function.*module level"):
        JsonSerializer().dumps(Local, what="the arguments of saga 'x'")


def test_a_stored_class_that_is_not_a_class_is_refused() -> None:
    with pytest.raises(SerializationError, match="stored class 'os:system' is not a class"):
        JsonSerializer().loads('{"__sk__":"class","t":"os:system"}')


def test_stored_type_that_is_not_a_dataclass_is_refused() -> None:
    text = '{"__sk__":"dataclass","t":"os:system","v":{}}'
    with pytest.raises(SerializationError, match="not a dataclass"):
        JsonSerializer().loads(text)


def test_unimportable_type_names_the_module() -> None:
    text = '{"__sk__":"enum","t":"no_such_module_xyz:Color","v":"red"}'
    with pytest.raises(SerializationError, match="no_such_module_xyz"):
        JsonSerializer().loads(text)


def test_a_type_whose_module_exits_when_imported_is_a_serialization_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: reading a value whose class's module exits when imported (a script's
    # `sys.exit()`, `argparse` reading the reader's command line) raised its SystemExit:
    # `sagakit show` ended with the module's message and status, as would a worker or
    # `recover()` reading the saga. It cannot be read, as a module that fails to import.
    (tmp_path / "sk_exits_when_imported.py").write_text(
        "import sys\nsys.exit('set APP_ENV first')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    text = '{"__sk__":"dataclass","t":"sk_exits_when_imported:Parcel","v":{}}'
    with pytest.raises(SerializationError) as raised:
        JsonSerializer().loads(text)
    assert "'sk_exits_when_imported:Parcel', which cannot be imported" in str(raised.value)
    assert "its module exits when imported (SystemExit: set APP_ENV first)" in str(raised.value)
    assert "sk_exits_when_imported" not in sys.modules


def test_bad_options_and_bad_text() -> None:
    with pytest.raises(SerializationError, match="max_size"):
        JsonSerializer(max_size=0)
    with pytest.raises(SerializationError, match="not valid JSON"):
        JsonSerializer().loads("{")
    with pytest.raises(SerializationError, match="takes a class"):
        register_codec("nope", encode=str, decode=str)  # type: ignore[arg-type]


# -------------------------------------------------- read back as stored


@dataclasses.dataclass
class LoginRecord:
    """A dataclass with an InitVar (not a field: never stored)."""

    user: str
    password: InitVar[str]
    digest: str = dataclasses.field(init=False, default="")

    def __post_init__(self, password: str) -> None:
        self.digest = "sha:" + password[::-1]


@dataclasses.dataclass
class CentsRecord:
    """__post_init__ normalises its input (euros -> cents)."""

    amount: int

    def __post_init__(self) -> None:
        self.amount = self.amount * 100


def test_a_dataclass_with_an_initvar_that_was_stored_can_be_read_back() -> None:
    # Regression: loads() called __init__, which needs the InitVar, so a step result
    # like this was stored but could not be read back (recovery dead-lettered the saga).
    serializer = JsonSerializer()
    value = LoginRecord("bob", "secret")
    text = serializer.dumps(value)  # accepted
    back = serializer.loads(text)
    assert back == value
    assert back.digest == value.digest


def test_a_dataclass_is_read_back_as_stored_not_through_post_init_again() -> None:
    # Regression: loads() called __init__, so __post_init__ ran again on stored values.
    serializer = JsonSerializer()
    value = CentsRecord(3)
    assert value.amount == 300
    back = serializer.loads(serializer.dumps(value))
    assert back == value, f"{value!r} came back as {back!r}"


def test_an_aware_datetime_keeps_its_time_zone() -> None:
    # Regression: the zone came back as a fixed offset (+01:00), so arithmetic across a
    # daylight-saving change gave another instant than on the value that was stored.
    serializer = JsonSerializer()
    value = datetime(2024, 1, 2, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    back = serializer.loads(serializer.dumps(value))
    assert back == value  # the same instant...
    later = timedelta(days=180)
    assert back + later == value + later, f"tzinfo {value.tzinfo!r} came back as {back.tzinfo!r}"


def test_a_time_of_day_keeps_its_time_zone() -> None:
    # Regression: a time's zone has no offset without a date, so isoformat() wrote it
    # as a naive time and the zone was silently dropped on the way back.
    serializer = JsonSerializer()
    value = time(9, 30, tzinfo=ZoneInfo("Europe/Paris"))
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert back.tzinfo == value.tzinfo, f"{value!r} came back as {back!r}"


def test_a_class_defined_in_a_function_is_refused_when_stored() -> None:
    # Regression: it was stored, but its name cannot be imported back, so get_saga()
    # showed raw tagged dicts and recovery dead-lettered the saga.
    @dataclass(frozen=True)
    class Paid:
        amount: int

    class Mood(enum.Enum):
        HAPPY = 1

    for value in (Paid(1), [Mood.HAPPY]):
        with pytest.raises(SerializationError, match=r"result of step 0.*inside a function"):
            JsonSerializer().dumps(value, what="the result of step 0")


@dataclasses.dataclass
class Versioned:
    name: str
    size: int = 1


def test_a_stored_dataclass_meets_its_changed_class_clearly() -> None:
    serializer = JsonSerializer()
    stored = serializer.dumps(Versioned("a", 2))
    missing = stored.replace('"name":"a",', "")
    with pytest.raises(SerializationError, match="no value for its field 'name'"):
        serializer.loads(missing)
    extra = stored.replace('"size":2', '"size":2,"colour":"red"')
    with pytest.raises(SerializationError, match="no longer has: colour"):
        serializer.loads(extra)
    # A field the stored value lacks but that has a default (added since): the default.
    defaulted = stored.replace(',"size":2', "")
    assert serializer.loads(defaulted) == Versioned("a")


def test_a_datetime_in_an_unknown_zone_keeps_its_offset() -> None:
    serializer = JsonSerializer()
    value = datetime(2024, 1, 2, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    text = serializer.dumps(value).replace("Europe/Paris", "Nowhere/Atlantis")
    back = serializer.loads(text)
    assert back == value
    assert back.utcoffset() == timedelta(hours=1)


# Classes whose name does not lead back to them: make_dataclass() and the functional
# Enum API take the class's name as a string, which may differ from the variable.
Parcel = dataclasses.make_dataclass("Package", [("weight", int)])
Shade = enum.Enum("Colour", "LIGHT DARK")  # type: ignore[misc]


@pytest.mark.parametrize("value", [Parcel(3), Shade.DARK, [Shade.LIGHT]], ids=repr)
def test_a_class_its_name_does_not_find_again_is_refused_when_stored(value: object) -> None:
    # Regression: only classes defined inside a function were refused; these were
    # stored, then could not be read back ("cannot be imported"), so recovery
    # dead-lettered the saga after its steps had acted.
    with pytest.raises(SerializationError, match=r"result of step 0.*cannot be found again"):
        JsonSerializer().dumps(value, what="the result of step 0")


def test_a_make_dataclass_class_left_in_module_types_says_how_to_store_it() -> None:
    # Regression: on Python 3.11, make_dataclass() puts the class in module 'types' even
    # under the name it is assigned to, and the error asked whether it was made "under
    # another name" and said to "give the class the name it is assigned to", which it
    # had: setting its __module__ is what makes it storable.
    made = dataclasses.make_dataclass("Made", [("weight", int)])
    made.__module__ = "types"  # what make_dataclass() does before Python 3.12
    with pytest.raises(SerializationError, match=r"result of step 0.*cannot be found again") as e:
        JsonSerializer().dumps(made(3), what="the result of step 0")
    assert "Made.__module__ = __name__" in str(e.value)
    assert "under another name?" not in str(e.value)
    made.__module__ = __name__
    made.__qualname__ = "Made"
    globals()["Made"] = made
    try:
        assert JsonSerializer().loads(JsonSerializer().dumps(made(3))) == made(3)
    finally:
        del globals()["Made"]


def test_a_class_replaced_under_its_own_name_is_still_stored() -> None:
    # A module reloaded (or a class redefined in a notebook): the name finds a class of
    # the same name, which reads the value back.
    global Versioned
    original = Versioned
    stale = Versioned("a", 2)

    @dataclasses.dataclass
    class Versioned:  # type: ignore[no-redef]
        name: str
        size: int = 1

    Versioned.__qualname__ = original.__qualname__
    try:
        back = JsonSerializer().loads(JsonSerializer().dumps(stale))
        assert type(back) is Versioned
        assert (back.name, back.size) == ("a", 2)
    finally:
        Versioned = original


def test_a_class_renamed_since_it_was_stored_says_how_to_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: the error advised to "register a codec under that name", which never
    # reads a dataclass or enum back (codecs are looked up for codec-tagged values only).
    serializer = JsonSerializer()
    module = Versioned.__module__
    text = serializer.dumps([Versioned("a", 2), Color.RED])
    old = text.replace(":Versioned", ":Release").replace(":Color", ":Colour")
    with pytest.raises(SerializationError, match=r"'.*:Release'.*cannot be imported") as caught:
        serializer.loads(old)
    assert "codec" not in str(caught.value)
    assert f"`Release = NewName` in module {module}" in str(caught.value)
    # What it says works: the old name as an alias of the class.
    monkeypatch.setattr(sys.modules[module], "Release", Versioned, raising=False)
    monkeypatch.setattr(sys.modules[module], "Colour", Color, raising=False)
    assert serializer.loads(old) == [Versioned("a", 2), Color.RED]


@pytest.mark.parametrize("fold", [0, 1])
def test_a_wall_time_in_a_daylight_saving_gap_comes_back_unchanged(fold: int) -> None:
    # Regression: 02:30 on the night clocks jump from 02:00 to 03:00 came back as 03:30
    # (or 01:30 with fold=1): the zone was put back by converting the stored instant,
    # which moved a wall time that the zone skips.
    serializer = JsonSerializer()
    value = datetime(2024, 3, 31, 2, 30, fold=fold, tzinfo=ZoneInfo("Europe/Paris"))
    back = serializer.loads(serializer.dumps(value))
    assert back == value, f"{value!r} came back as {back!r}"
    assert (back.hour, back.fold, back.utcoffset()) == (2, fold, value.utcoffset())


@pytest.mark.parametrize("fold", [0, 1])
def test_an_ambiguous_wall_time_keeps_its_fold(fold: int) -> None:
    serializer = JsonSerializer()
    value = datetime(2024, 10, 27, 2, 30, fold=fold, tzinfo=ZoneInfo("Europe/Paris"))
    back = serializer.loads(serializer.dumps(value))
    assert (back, back.fold, back.utcoffset()) == (value, fold, value.utcoffset())


def test_a_datetime_whose_zone_rules_changed_since_keeps_its_instant() -> None:
    # Stored with an offset the zone no longer gives that wall time (a tzdata update).
    text = '{"__sk__":"datetime","v":"2024-01-02T09:00:00+05:00","z":"Europe/Paris"}'
    back = JsonSerializer().loads(text)
    assert back == datetime(2024, 1, 2, 4, 0, tzinfo=UTC)
    assert back.tzinfo == ZoneInfo("Europe/Paris")


@dataclasses.dataclass
class Order:
    ref: str
    upper: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.upper = self.ref.upper()  # a field: stored
        self.cache = {"ref": self.ref}  # not a field: not stored (as documented)


def test_only_the_fields_of_a_dataclass_are_stored_as_documented() -> None:
    back = JsonSerializer().loads(JsonSerializer().dumps(Order("a1")))
    assert back == Order("a1")
    assert back.upper == "A1"
    assert not hasattr(back, "cache")


@dataclass
class TaggedDict(dict):  # type: ignore[type-arg]
    label: str = ""


@dataclass(frozen=True)
class TaggedTuple(tuple):  # type: ignore[type-arg]
    label: str = ""


@dataclass
class Word(str):
    label: str = ""


def test_a_dataclass_that_is_also_a_built_in_value_is_refused_not_emptied() -> None:
    # Regression: only the fields were stored, so a dataclass subclassing dict came back
    # without its items (a tuple's items, a str's text), silently.
    tagged = TaggedDict(label="x")
    tagged["item"] = 1
    for value, base in ((tagged, "dict"), (TaggedTuple((1, 2)), "tuple"), (Word("text"), "str")):
        with pytest.raises(
            SerializationError,
            match=rf"the result of step 0: .*\.{type(value).__name__} is a dataclass and a "
            rf"{base}: only its fields would be stored, not the {base}'s own contents; "
            "register a codec for it, or keep the contents in a field",
        ):
            JsonSerializer().dumps([value], what="the result of step 0")


def test_reading_a_value_back_imports_the_module_its_class_is_stored_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Documented: the log names modules, and reading it imports them, running their
    # top-level code (so only trusted processes may write a log).
    (tmp_path / "sk_logged_module.py").write_text(
        "import enum, os\n"
        "os.environ['SK_LOGGED_MODULE_RAN'] = '1'\n"
        "class Tone(enum.Enum):\n    LOW = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SK_LOGGED_MODULE_RAN", "0")
    monkeypatch.delitem(sys.modules, "sk_logged_module", raising=False)
    back = JsonSerializer().loads('{"__sk__":"enum","t":"sk_logged_module:Tone","v":1}')
    assert back.name == "LOW"
    assert os.environ["SK_LOGGED_MODULE_RAN"] == "1"
    sys.modules.pop("sk_logged_module")


@dataclasses.dataclass(eq=False)
class Node:
    name: str
    parent: Node | None = None
    children: list[Node] = dataclasses.field(default_factory=list)


def test_a_value_that_contains_itself_is_refused_saying_so() -> None:
    # Regression: a tree with back-references (or a list holding itself) failed with a
    # bare "maximum recursion depth exceeded", which reads like a bug in sagakit.
    root = Node("root")
    root.children.append(Node("leaf", parent=root))
    looped: list[object] = []
    looped.append(looped)
    for value in (root, looped):
        with pytest.raises(SerializationError, match=r"result of step 0.*contains itself"):
            JsonSerializer().dumps(value, what="the result of step 0")


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Celsius) and other.degrees == self.degrees

    __hash__ = None  # type: ignore[assignment]


class Fahrenheit(Celsius):
    pass


def test_a_codec_name_taken_by_another_class_is_refused() -> None:
    # Registering a second class under a name silently replaced the first: values of the
    # first already logged under that name were then read back as the second class.
    register_codec(Celsius, encode=lambda c: c.degrees, decode=Celsius, name="temperature")
    logged = JsonSerializer().dumps(Celsius(21.5))
    with pytest.raises(SerializationError, match=r"'temperature' is taken by .*Celsius"):
        register_codec(
            Fahrenheit, encode=lambda f: f.degrees, decode=Fahrenheit, name="temperature"
        )
    assert JsonSerializer().loads(logged) == Celsius(21.5)
    assert type(JsonSerializer().loads(logged)) is Celsius
    # The same class again (a module reloaded, say) is no clash.
    register_codec(Celsius, encode=lambda c: c.degrees, decode=Celsius, name="temperature")


def test_a_class_renamed_reads_its_old_name_and_stores_under_the_new_one() -> None:
    register_codec(Fahrenheit, encode=lambda f: f.degrees, decode=Fahrenheit, name="old-f")
    old = JsonSerializer().dumps(Fahrenheit(70.0))
    register_codec(Fahrenheit, encode=lambda f: f.degrees, decode=Fahrenheit, name="new-f")
    assert '"new-f"' in JsonSerializer().dumps(Fahrenheit(70.0))  # the newest name is used
    assert JsonSerializer().loads(old) == Fahrenheit(70.0)  # old logs still read


@pytest.mark.parametrize("builtin", [str, int, float, bool, type(None), list, dict, tuple])
def test_a_codec_for_a_type_stored_natively_is_refused(builtin: type) -> None:
    # It was accepted and silently never used.
    with pytest.raises(SerializationError, match=r"stores .* values itself"):
        register_codec(builtin, encode=str, decode=str)


def test_a_codec_name_must_be_a_non_empty_string() -> None:
    with pytest.raises(SerializationError, match="non-empty string"):
        register_codec(Celsius, encode=str, decode=str, name="")


class Kelvin:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


def test_per_serializer_codecs_are_checked_as_register_codec_checks() -> None:
    # Codec(...) objects given to one serializer were taken unchecked: two classes under one
    # name, or a local name a global codec of another class holds, read values of one class
    # back as the other; a codec for a natively stored type was silently never used.
    celsius = Codec(Celsius, "degrees", lambda c: c.degrees, Celsius)
    kelvin = Codec(Kelvin, "degrees", lambda k: k.degrees, Kelvin)
    with pytest.raises(SerializationError, match=r"'degrees' is taken by .*Celsius"):
        JsonSerializer(codecs=[celsius, kelvin])
    register_codec(Celsius, encode=lambda c: c.degrees, decode=Celsius, name="celsius-global")
    shadow = Codec(Kelvin, "celsius-global", lambda k: k.degrees, Kelvin)
    with pytest.raises(SerializationError, match=r"'celsius-global' is taken by .*Celsius"):
        JsonSerializer(codecs=[shadow])
    with pytest.raises(SerializationError, match=r"stores int values itself"):
        JsonSerializer(codecs=[Codec(int, "int", str, int)])
    with pytest.raises(SerializationError, match=r"takes a class"):
        JsonSerializer(codecs=[Codec("Kelvin", "k", str, str)])  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match=r"non-empty string"):
        JsonSerializer(codecs=[Codec(Kelvin, "", str, str)])
    with pytest.raises(SerializationError, match=r"a list of Codec objects"):
        JsonSerializer(codecs=Codec(Kelvin, "k", str, str))  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match=r"a list of Codec objects, got 3"):
        JsonSerializer(codecs=3)  # type: ignore[arg-type]  # was a bare TypeError
    # Regression: a string was taken as a list of its characters ("codecs must be sagakit
    # Codec objects, got 'c'"), and an item that is no Codec was refused without the fix.
    with pytest.raises(SerializationError, match=r"a list of Codec objects, got 'celsius'"):
        JsonSerializer(codecs="celsius")  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match=r"got Celsius; .*Codec\(cls, name, encode"):
        JsonSerializer(codecs=[Celsius])  # type: ignore[list-item]
    # The same class twice (a module reloaded, say) is no clash.
    again = Codec(Celsius, "celsius-global", lambda c: c.degrees, Celsius)
    serializer = JsonSerializer(codecs=[again, again])
    assert type(serializer.loads(serializer.dumps(Celsius(3.0)))) is Celsius


def test_a_global_codec_registered_under_a_serializers_own_codec_name_is_refused() -> None:
    # A serializer reads its own codecs' names first: a global codec registered later under
    # one of them stored values that came back as the serializer's class.
    serializer = JsonSerializer(codecs=[Codec(Kelvin, "kelvin-local", lambda k: 0, Kelvin)])
    register_codec(Fahrenheit, encode=lambda f: f.degrees, decode=Fahrenheit, name="kelvin-local")
    with pytest.raises(SerializationError, match=r"'kelvin-local' is taken by .*Kelvin"):
        serializer.dumps(Fahrenheit(70.0))
    assert JsonSerializer().loads(JsonSerializer().dumps(Fahrenheit(70.0))) == Fahrenheit(70.0)


EST = timezone(timedelta(hours=-5), "EST")


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 1, 2, 9, 0, tzinfo=EST),
        time(9, 0, tzinfo=EST),
        datetime(2024, 10, 27, 2, 30, fold=1),  # naive: the second 02:30 of a local clock
        time(2, 30, fold=1),
        time(2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
    ],
)
def test_a_fixed_zone_keeps_its_name_and_a_clock_its_fold(value: datetime | time) -> None:
    # The ISO text keeps neither: EST came back as "UTC-05:00", and fold=1 as fold=0 (a naive
    # datetime's timestamp() then an hour off in the repeated hour).
    serializer = JsonSerializer()
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert (back.tzname(), back.fold) == (value.tzname(), value.fold), f"came back as {back!r}"


class SummerTime(tzinfo):
    """A zone with daylight-saving rules, as dateutil's or pytz's are: no offset without
    a date."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        if dt is None:
            return None
        return timedelta(hours=2 if 4 <= dt.month <= 9 else 1)

    def dst(self, dt: datetime | None) -> timedelta | None:
        if dt is None:
            return None
        return timedelta(hours=1 if 4 <= dt.month <= 9 else 0)

    def tzname(self, dt: datetime | None) -> str:
        return "CEST" if self.dst(dt) else "CET"


def test_a_time_zone_that_would_come_back_as_a_fixed_offset_is_refused() -> None:
    # It came back as timezone(+01:00): the same instant, but arithmetic across a
    # daylight-saving change then gave another one, silently.
    value = datetime(2024, 1, 2, 9, 0, tzinfo=SummerTime())
    with pytest.raises(SerializationError, match=r"SummerTime time zone.*ZoneInfo"):
        JsonSerializer().dumps(value, what="the result of step 0")
    with pytest.raises(SerializationError, match=r"SummerTime time zone"):
        JsonSerializer().dumps(time(9, 0, tzinfo=SummerTime()))
    # A codec for datetime still stores it, as it chooses.
    codec = Codec(datetime, "summer", lambda d: d.replace(tzinfo=None).isoformat(), str)
    assert JsonSerializer(codecs=[codec]).dumps(value)


class ThirdPartyUTC(tzinfo):
    """A fixed zone of another library (pytz.utc, dateutil.tz.tzutc()): one offset."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "UTC"


def test_a_fixed_time_zone_of_another_library_comes_back_as_that_offset() -> None:
    # Fixed zones lose no rules: refusing them would refuse pytz.utc and dateutil's tzutc().
    serializer = JsonSerializer()
    value = datetime(2024, 7, 2, 9, 0, tzinfo=ThirdPartyUTC())
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert back.tzinfo == UTC
    clock = time(9, 0, tzinfo=ThirdPartyUTC())
    assert serializer.loads(serializer.dumps(clock)) == time(9, 0, tzinfo=UTC)


SCRIPT_WITH_A_CODEC = """\
import sys
from sagakit import JsonSerializer, register_codec

class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

register_codec(Money, encode=lambda m: m.cents, decode=Money)  # no name=: "<module>:Money"
serializer = JsonSerializer()
if sys.argv[1] == "write":
    print(serializer.dumps(Money(5), what="money"))
else:
    print(serializer.loads(sys.argv[2]).cents)
"""


def test_a_script_reads_back_what_it_stored_under_main_before(tmp_path: Path) -> None:
    # A script's classes (and its codecs without a name=) were stored as "__main__:X";
    # they are now stored under the script's module name. Values an earlier sagakit
    # wrote must still read back in that script: its codec under the new name.
    import subprocess

    (tmp_path / "shop.py").write_text(SCRIPT_WITH_A_CODEC, encoding="utf-8")

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "shop.py", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    stored = run("write")
    assert '"t":"shop:Money"' in stored  # readable by `--import shop`
    assert run("read", stored) == "5"
    assert run("read", stored.replace('"shop:Money"', '"__main__:Money"')) == "5"


class _Kelvin:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


class _Rankine:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


def test_a_codec_registered_while_a_value_is_encoded_does_not_fail_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: readers iterated the global registry that register_codec() changed in
    # place, under a lock only writers took. A registration from another thread while a
    # step's result was encoded failed that step ("dictionary changed size during
    # iteration"). Made deterministic here: the registry registers a codec right in the
    # middle of being read. Copy-on-write: the dict being read is never changed.
    from sagakit import _serialization

    class RegistersMidRead(dict[str, Codec]):
        def values(self) -> Any:
            view = super().values()

            class Values:
                def __reversed__(self) -> Any:
                    newest = reversed(view)
                    yield next(newest)
                    register_codec(
                        _Rankine, encode=lambda r: r.degrees, decode=_Rankine, name="rankine"
                    )
                    yield from newest

            return Values()

    kelvin = Codec(_Kelvin, "kelvin", lambda k: k.degrees, _Kelvin)
    celsius = Codec(Celsius, "celsius-mid-read", lambda c: c.degrees, Celsius)
    registry = RegistersMidRead(kelvin=kelvin, **{"celsius-mid-read": celsius})
    monkeypatch.setattr(_serialization, "_global_codecs", registry)
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(_Kelvin(1.5))).degrees == 1.5
    assert dict(registry) == {"kelvin": kelvin, "celsius-mid-read": celsius}  # untouched
    assert "rankine" in _serialization._global_codecs  # the registration took effect


def test_a_registration_swaps_in_a_new_registry_and_keeps_a_name_readable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Copy-on-write: a reader holding the registry it read is not affected by a
    # registration, including a re-registration of a name (which used to pop the name
    # and put it back: a lookup in between found no codec and failed a read).
    from sagakit import _serialization

    monkeypatch.setattr(_serialization, "_global_codecs", dict(_serialization._global_codecs))
    first = register_codec(_Kelvin, encode=lambda k: k.degrees, decode=_Kelvin, name="k-cow")
    held = _serialization._global_codecs
    snapshot = dict(held)
    again = register_codec(_Kelvin, encode=lambda k: k.degrees, decode=_Kelvin, name="k-cow")
    register_codec(_Rankine, encode=lambda r: r.degrees, decode=_Rankine, name="r-cow")
    assert held == snapshot
    assert held["k-cow"] is first
    assert _serialization._global_codecs is not held
    assert _serialization._global_codecs["k-cow"] is again
    with pytest.raises(SerializationError):  # a clash leaves the registry as it was
        register_codec(_Rankine, encode=str, decode=str, name="k-cow")
    assert _serialization._global_codecs["k-cow"] is again
