"""RunOptions: one home for every run option's default, shared by the CLI and the engine."""

from __future__ import annotations

import dataclasses

import pytest

from framebag.cli import build_parser, run_options
from framebag.errors import FramebagError
from framebag.options import RunOptions, cli_fields


def test_the_command_lines_defaults_are_run_options_defaults():
    args = build_parser().parse_args(["run", "wf.py", "in.h5"])
    parsed = RunOptions.of(**run_options(args))
    defaults = RunOptions()
    for f in dataclasses.fields(RunOptions):
        if f.name == "params":  # --set gives {} for none, the same as None to a run
            assert not parsed.params and not defaults.params
            continue
        assert getattr(parsed, f.name) == getattr(defaults, f.name), f.name


def test_every_flag_takes_its_help_from_the_field():
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
               if a.prog.endswith(" run"))
    helps = {a.option_strings[-1]: a.help for a in run._actions if a.option_strings}
    for f in cli_fields():
        assert helps[f.metadata["flag"]] == f.metadata["help"], f.name


def test_keywords_replace_single_options_and_unknown_ones_are_named():
    base = RunOptions(timeout=5.0)
    changed = RunOptions.of(base, follow=True, keys=["k1", "k2"])
    assert (changed.timeout, changed.follow, changed.keys) == (5.0, True, ("k1", "k2"))
    assert base.follow is False  # frozen: the base is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.follow = True  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown run option 'folow'"):
        RunOptions.of(folow=True)


@pytest.mark.parametrize(("given", "named"), [
    ({"on_error": "ignore"}, "on_error"), ({"partition_bytes": 0}, "--partition-bytes"),
    ({"timeout": 0}, "--timeout"), ({"latency": -1}, "--latency"),
    ({"retries": -1}, "--retries"), ({"commit_interval": -0.5}, "--commit-interval")])
def test_a_bad_value_is_refused_naming_its_option(given, named):
    with pytest.raises(FramebagError, match=named):
        RunOptions(**given)


def test_the_commit_interval_defaults_by_follow():
    assert RunOptions().resolved_commit_interval == 0.5
    assert RunOptions(follow=True).resolved_commit_interval == 0.1
    assert RunOptions(follow=True, commit_interval=2).resolved_commit_interval == 2.0


def test_one_key_path_as_a_str_is_one_path_not_its_letters():
    # Workflow(keys="a/b") takes one path; RunOptions(keys="a/b") made ('a', '/', 'b')
    assert RunOptions(keys="entry/keys/key_1").keys == ("entry/keys/key_1",)
    assert RunOptions(axes="entry/x").axes == ("entry/x",)


@pytest.mark.parametrize("given", [dict(timeout="5"), dict(partition_bytes="64M"),
                                   dict(latency=float("nan")), dict(poll_interval=-1),
                                   dict(retries=True), dict(commit_interval=float("inf"))])
def test_a_bad_number_is_a_framebag_error_naming_the_option(given):
    (name,) = given
    with pytest.raises(FramebagError, match=f"{name}|{name.replace('_', '-')}"):
        RunOptions(**given)


def test_options_given_as_a_dict_says_what_to_pass():
    with pytest.raises(TypeError, match="RunOptions"):  # was "replace() should be called ..."
        RunOptions.of({"overwrite": True})


@pytest.mark.parametrize("given", [dict(profile=123), dict(params=["y0=1"])])
def test_a_profile_or_params_of_the_wrong_kind_is_a_framebag_error(given):
    (name,) = given  # were a raw TypeError / AttributeError from deep in the run
    with pytest.raises(FramebagError, match=name):
        RunOptions(**given)
