"""``--set NAME=VALUE``: parsing, and conversion to the type of the parameter's default.

No cluster and no file: ``cli._parse_set`` and ``Workflow.resolve_params`` on a
workflow whose functions are registered but never run.
"""

from __future__ import annotations

import pytest

from framebag import FramebagError, Workflow
from framebag.cli import _parse_set


@pytest.fixture
def wf() -> Workflow:
    w = Workflow("params", data="entry/data/data", keys=["entry/keys/key_1"])

    @w.frame
    def roi(frame, *, y0=0, scale=1.0, z=1j, on=False, label="a", box=(0, 1),
            bins=[1, 2], opts={"k": 1}, anything=None):  # noqa: B006 - defaults read only
        return frame.sum()

    @w.frame(fold="sum")
    def other(frame, *, y0=0, gain=2.5):  # y0 is shared with roi: one value for both
        return frame

    return w


def test_defaults_of_every_function_are_the_parameters(wf: Workflow) -> None:
    assert wf.resolve_params(None) == {"y0": 0, "scale": 1.0, "z": 1j, "on": False,
                                       "label": "a", "box": (0, 1), "bins": [1, 2],
                                       "opts": {"k": 1}, "anything": None, "gain": 2.5}


@pytest.mark.parametrize("key, text, want", [
    ("y0", "7", 7), ("y0", "-3", -3), ("scale", "2", 2.0), ("scale", "1e-3", 1e-3),
    ("gain", "inf", float("inf")), ("z", "1+2j", 1 + 2j),
    ("on", "true", True), ("on", "YES", True), ("on", "1", True), ("on", "on", True),
    ("on", "false", False), ("on", "No", False), ("on", "0", False), ("on", "off", False),
    ("label", "7", "7"), ("label", "", ""),
    ("box", "(2, 3)", (2, 3)), ("bins", "[4, 5, 6]", [4, 5, 6]), ("opts", "{'a': 2}", {"a": 2}),
    ("anything", "[1, 'x']", [1, "x"]), ("anything", "3.5", 3.5),
])
def test_a_string_becomes_the_type_of_the_default(wf: Workflow, key: str, text: str,
                                                  want: object) -> None:
    got = wf.resolve_params({key: text})[key]
    assert got == want and type(got) is type(want)


def test_values_given_from_python_are_kept_as_they_are(wf: Workflow) -> None:
    got = wf.resolve_params({"y0": 2.5, "box": [1], "on": 0})
    assert (got["y0"], got["box"], got["on"]) == (2.5, [1], 0)


@pytest.mark.parametrize("key, text, message", [
    ("y0", "1.5", "--set y0=1.5: cannot convert '1.5' to int (the type of its default 0)"),
    ("y0", "ten", "--set y0=ten: cannot convert 'ten' to int (the type of its default 0)"),
    ("scale", "x", "--set scale=x: cannot convert 'x' to float (the type of its default 1.0)"),
    ("on", "maybe", "--set on=maybe: cannot convert 'maybe' to bool (the type of its default "
                    "False)"),
    ("box", "[2, 3]", "--set box=[2, 3]: cannot convert '[2, 3]' to tuple (the type of its "
                      "default (0, 1))"),
    ("opts", "{'a':", "--set opts={'a':: cannot convert \"{'a':\" to dict"),
    ("anything", "os.system('x')", "--set anything=os.system('x'): cannot convert"),
])
def test_a_bad_value_is_one_sentence_naming_the_option(wf: Workflow, key: str, text: str,
                                                       message: str) -> None:
    with pytest.raises(FramebagError) as err:
        wf.resolve_params({key: text})
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_an_unknown_name_lists_the_parameters(wf: Workflow) -> None:
    with pytest.raises(FramebagError, match=r"unknown parameter 'y1' for workflow 'params' "
                                            r"\(parameters: anything, bins, box, gain, label, "
                                            r"on, opts, scale, y0, z\)"):
        wf.resolve_params({"y1": "2"})
    with pytest.raises(FramebagError, match=r"\(parameters: none\)"):
        Workflow("empty").resolve_params({"y1": "2"})


def test_parse_set_splits_at_the_first_equals_sign() -> None:
    assert _parse_set(["a=1", " b =x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    assert _parse_set(["a=1", "a=2"]) == {"a": "2"}  # the last one given wins


@pytest.mark.parametrize("item", ["a", "=1", ""])
def test_parse_set_refuses_an_item_without_a_name_and_value(item: str) -> None:
    with pytest.raises(FramebagError, match=rf"--set {item!r}: expected name=value"):
        _parse_set([item])
