"""The C record maker (``routing_middleware/_records.c``) against the dataclass
constructor it stands in for; skipped when the extension was not built."""

from __future__ import annotations

import abc
import dataclasses
from decimal import Decimal

import pytest

from routing_middleware import _record_maker
from routing_middleware.router import Decision, Deployment, Reason
from tests.core.child import assert_runs

RecordMaker = _record_maker._NativeRecordMaker
pytestmark = pytest.mark.skipif(RecordMaker is None, reason="the C record maker is not built")


def _values() -> tuple[object, ...]:
    primary = Deployment("openai/gpt-4o-mini", "openai", "gpt-4o-mini")
    return (
        primary,
        (Deployment("a/b", "a", "b"),),
        1,
        Decimal("0.000123"),
        "gpt-4o",
        Decimal("0.002"),
        "enforce",
        (Reason("chosen", "chose it"),),
        primary,
        120,
        256,
    )


def test_a_made_decision_is_the_one_the_dataclass_makes() -> None:
    made = _record_maker.record_maker(Decision)
    assert isinstance(made, RecordMaker)
    values = _values()
    decision, reference = made(*values), Decision(*values)
    assert type(decision) is Decision
    assert decision == reference
    assert hash(decision) == hash(reference)
    assert repr(decision) == repr(reference)
    assert dataclasses.astuple(decision) == dataclasses.astuple(reference)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.tier = 2  # type: ignore[misc]


def test_a_maker_takes_exactly_one_positional_value_per_field() -> None:
    made = _record_maker.record_maker(Reason)
    assert made("code", "message") == Reason("code", "message")
    with pytest.raises(TypeError, match=r"takes 2 values \(1 given\)"):
        made("code")
    with pytest.raises(TypeError, match=r"takes 2 values \(3 given\)"):
        made("a", "b", "c")
    with pytest.raises(TypeError, match="positional values only"):
        made("code", message="message")


def test_a_maker_refuses_what_it_cannot_make() -> None:
    with pytest.raises(TypeError):
        RecordMaker(Reason, ["code"])  # names must be a tuple
    with pytest.raises(TypeError, match="tuple of str"):
        RecordMaker(Reason, ("code", 1))
    with pytest.raises(TypeError):
        RecordMaker("Reason", ("code",))  # not a type
    # A field the class has no slot for is refused as object.__setattr__ refuses it.
    with pytest.raises(AttributeError):
        RecordMaker(Reason, ("code", "nope"))("a", "b")

    @dataclasses.dataclass(frozen=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            raise AssertionError("never skipped")

    with pytest.raises(TypeError, match="__post_init__"):
        _record_maker.record_maker(Checked)

    @dataclasses.dataclass(frozen=True)
    class Keyworded:
        value: int
        flag: bool = dataclasses.field(default=False, kw_only=True)

    with pytest.raises(TypeError, match="not by position"):
        _record_maker.record_maker(Keyworded)

    # What object.__new__ would not make: a builtin's instance needs its own __new__
    # (made by tp_alloc alone, a dict crashed on first use), an abstract class none.
    class Abstract(abc.ABC):
        @abc.abstractmethod
        def run(self) -> None: ...

    for cls in (dict, type, Abstract):
        with pytest.raises(TypeError, match=r"only classes object\.__new__ makes"):
            RecordMaker(cls, ())


def test_a_maker_is_initialised_once() -> None:
    maker = RecordMaker(Reason, ("code", "message"))
    with pytest.raises(RuntimeError, match="initialised already"):
        maker.__init__(Decision, ("primary",))  # type: ignore[misc]
    assert maker("a", "b") == Reason("a", "b")


def test_a_maker_not_initialised_raises_instead_of_crashing() -> None:
    code = (
        "from routing_middleware._records import RecordMaker\n"
        "maker = RecordMaker.__new__(RecordMaker)\n"
        "try:\n"
        "    maker()\n"
        "except RuntimeError as e:\n"
        "    assert 'not initialised' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    assert_runs(code)


def test_without_the_extension_the_dataclass_is_the_maker() -> None:
    code = (
        "from routing_middleware import _record_maker\n"
        "from routing_middleware.router import Decision\n"
        "assert _record_maker.record_maker(Decision) is Decision\n"
    )
    assert_runs(code, pure_python=True)
