"""The usual slips on the command line get a hint at what was meant."""

from __future__ import annotations

from pathlib import Path

from .conftest import assert_one_sentence, run_cli

REPO = Path(__file__).resolve().parents[1]


def test_a_misspelt_option_names_the_closest_one(capsys):
    rc, err = run_cli(capsys, "run", "framebag.workflows.frame_sum", "in.h5", "--folow")
    assert_one_sentence(rc, err, "--folow", "did you mean --follow?")
    assert rc == 2


def test_an_unknown_option_with_nothing_close_points_at_help(capsys):
    rc, err = run_cli(capsys, "inspect", "in.h5", "--zzz")
    assert_one_sentence(rc, err, "--zzz", "framebag inspect --help")


def test_a_workflow_file_named_without_py_is_suggested_with_it(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc, err = run_cli(capsys, "run", "workflows/frame_sum", "in.h5")
    assert_one_sentence(rc, err, "'workflows/frame_sum'", "did you mean workflows/frame_sum.py?")


def test_a_module_written_as_a_path_is_suggested_dotted(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc, err = run_cli(capsys, "run", "framebag/workflows/frame_sum", "in.h5")
    assert_one_sentence(rc, err, "did you mean the module framebag.workflows.frame_sum?")


def test_debug_adds_the_traceback_and_keeps_the_exit_code(capsys, tmp_path):
    missing = str(tmp_path / "missing.h5")
    rc, err = run_cli(capsys, "run", "framebag.workflows.frame_sum", missing)
    rc_debug, err_debug = run_cli(capsys, "--debug", "run", "framebag.workflows.frame_sum",
                                  missing)
    assert rc == rc_debug == 2
    assert "Traceback" in err_debug and "Traceback" not in err
    assert err_debug.splitlines()[-1] == err.splitlines()[-1]


def test_an_option_cut_short_is_not_taken_for_the_whole(capsys, tmp_path):
    """argparse took ``--resum`` for ``--resume``: a typo must not change what a run does."""
    rc, err = run_cli(capsys, "run", "framebag.workflows.frame_sum", str(tmp_path / "in.h5"),
                      "--resum")
    assert_one_sentence(rc, err, "--resum", "did you mean --resume?")
    assert rc == 2


def test_a_value_argparse_refuses_is_one_line_naming_the_option(capsys, tmp_path):
    """It printed argparse's whole usage block before the error."""
    rc, err = run_cli(capsys, "run", "framebag.workflows.frame_sum", str(tmp_path / "in.h5"),
                      "--retries", "x")
    assert_one_sentence(rc, err, "--retries", "'x'", "framebag run --help")
    assert rc == 2
