"""tests.daemon.wait_for: what the integration tests wait with, and what it says when it gives up."""

from __future__ import annotations

import itertools

import pytest

from tests.daemon import wait_for


def test_returns_the_first_true_value() -> None:
    values = iter([0, [], {"ready": True}])
    assert wait_for(lambda: next(values), 5, interval=0) == {"ready": True}


def test_a_timeout_names_what_and_the_last_value_seen() -> None:
    counter = itertools.count()
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the answer; last saw: \[\]"):
        wait_for(lambda: [] if next(counter) >= 0 else [1], 0.05, "the answer", interval=0.01)
    assert next(counter) >= 2  # asked more than once before giving up


def test_ignored_exceptions_are_not_yet_and_reported() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(AssertionError, match="last saw: ConnectionRefusedError"):
        wait_for(refused, 0.05, "a listener", interval=0.01, ignore=(OSError,))


def test_other_exceptions_propagate_at_once() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_for(broken, 5, ignore=(OSError,))
    assert calls == [1]


class Falsy:
    """A status that is not there yet, with a long description."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "head " + "y" * 10_000 + " tail"


def test_a_long_last_value_is_shortened_keeping_both_ends() -> None:
    with pytest.raises(AssertionError) as info:
        wait_for(Falsy, 0.01, interval=0.01)
    text = str(info.value)
    assert len(text) < 2200 and "last saw: head" in text and text.endswith(" tail")


def test_until_decides_and_the_last_value_is_reported() -> None:
    states = iter(["unknown", "online", "online", "offline"])
    assert wait_for(lambda: next(states), 5, interval=0, until=lambda s: s == "offline") == "offline"
    with pytest.raises(AssertionError, match="last saw: 'online'"):
        wait_for(lambda: "online", 0.02, "offline", interval=0.01, until=lambda s: s == "offline")
