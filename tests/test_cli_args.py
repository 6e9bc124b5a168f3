"""Every numeric option is checked at the parser; --version; help texts without doubled defaults.

A bad value must stop the command before any work, with exit code 2 and one line naming
the option (no traceback, no hang, no meaningless run).
"""

import argparse
import re
import subprocess
import sys

import pytest

from edgeliquid import cli
from edgeliquid.cli import args as cliargs

BAD = [
    # (argv, the option the error must name)
    (["bench", "m.onnx", "--steps", "0"], "--steps"),
    (["bench", "m.onnx", "--steps", "1.5"], "--steps"),
    (["bench", "m.onnx", "--batch", "-1"], "--batch"),
    (["bench", "m.onnx", "--backend", "cuda", "--cuda-batches", "64", "0"], "--cuda-batches"),
    (["firmware", "m.onnx", "-o", "out", "--min-elapsed", "0"], "--min-elapsed"),
    (["firmware", "m.onnx", "-o", "out", "--min-elapsed", "nan"], "--min-elapsed"),
    (["run", "--config", "x.yaml", "--seconds", "0"], "--seconds"),
    (["run", "--config", "x.yaml", "--seconds", "-2"], "--seconds"),
    (["sim", "--rate", "-5"], "--rate"),
    (["sim", "--rate", "0"], "--rate"),
    (["sim", "--rate", "1e9"], "--rate"),
    (["sim", "--noise", "-0.1"], "--noise"),
    (["sim", "--jitter", "1"], "--jitter"),
    (["sim", "--jitter", "-0.1"], "--jitter"),
    (["sim", "--seconds", "0"], "--seconds"),
    (["sim", "--seed", "-1"], "--seed"),
    (["demo", "--rate", "0"], "--rate"),
    (["demo", "--rate", "-100"], "--rate"),
    (["demo", "--rate", "nan"], "--rate"),
    (["demo", "--seconds", "0"], "--seconds"),
    (["demo", "--seconds", "-5"], "--seconds"),
    (["demo", "--seconds", "inf"], "--seconds"),
    (["demo", "--push", "0"], "--push"),
    (["demo", "--push", "5@-1"], "--push"),
    (["demo", "--push", "five"], "--push"),
    (["demo", "--push-duration", "0"], "--push-duration"),
    (["demo", "--random-pushes", "-1"], "--random-pushes"),
    (["demo", "--seed", "-1"], "--seed"),
    (["profile", "m.onnx", "--steps", "-5"], "--steps"),
    (["profile", "m.onnx", "--steps", "0"], "--steps"),
    (["profile", "m.onnx", "--batch", "0"], "--batch"),
    (["profile", "--wakeup", "--rate", "-1000"], "--rate"),
    (["profile", "--wakeup", "--seconds", "0"], "--seconds"),
    (["profile", "--link", "loop://", "--rate", "0"], "--rate"),
]


@pytest.mark.parametrize("argv,option", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_numeric_argument_exits_2_naming_it(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"edgeliquid {argv[0]}: error: argument {option}"), last
    assert "expected" in last and repr(argv[-1]) in last, last  # what was wrong, and the value


def test_bad_argument_in_a_real_process_is_one_line_not_a_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "edgeliquid", "demo", "--rate", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "edgeliquid demo: error: argument --rate: expected a number in [1, 100000], got '0'"
    )


def test_good_values_parse():
    p = cli.build_parser()
    a = p.parse_args(["demo", "--seconds", "0.5", "--rate", "1", "--push", "10", "--push=-7.5@3"])
    assert a.seconds == 0.5 and a.rate == 1.0 and a.push == [(10.0, None), (-7.5, 3.0)]
    a = p.parse_args(["sim", "--jitter", "0.99", "--noise", "0", "--rate", "100000"])
    assert a.jitter == 0.99 and a.noise == 0.0 and a.rate == 100_000.0
    assert p.parse_args(["bench", "m.onnx", "--batch", "0"]).batch == 0  # 0: skip the batch run


def test_push_past_the_end_of_the_run_is_a_one_line_error(capsys):
    assert cli.main(["demo", "--seconds", "2", "--push", "5@3"]) == 2
    assert (
        capsys.readouterr().err.strip() == "edgeliquid demo: error: --push 5@3: the run is only --seconds 2"
    )


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgeliquid {version('edgeliquid')}"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its words ("fleet replay" for a nested subcommand)."""

    def walk(parser: argparse.ArgumentParser, prefix: str) -> dict[str, argparse.ArgumentParser]:
        out = {}
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, child in a.choices.items():
                    out[prefix + name] = child
                    out.update(walk(child, prefix + name + " "))
        return out

    return walk(cli.build_parser(), "")


COMMANDS = sorted(_subparsers())


def test_every_command_is_covered():
    assert {"export", "inspect", "bench", "firmware", "run", "sim", "demo", "replay", "profile"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_renders_with_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command.split(), "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    flat = re.sub(r"\s+", " ", text)  # help lines wrap
    assert "(default: None)" not in flat and "(default: False)" not in flat, text
    for action in _subparsers()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name}: no description"
        shown = cliargs.HelpFormatter(command)._expand_help(action)
        assert shown.count("default:") <= 1, f"{command} {name}: default stated twice: {shown!r}"
    # and each option's own help line in the rendered text has at most one "(default: ...)"
    for entry in re.split(r"\n  (?=-)", text):
        assert len(re.findall(r"\(default:", re.sub(r"\s+", " ", entry))) <= 1, entry


def test_argument_types_reject_what_they_should():
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a number > 0, got '-1'"):
        cliargs.positive_float("-1")
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected an integer >= 0"):
        cliargs.nonneg_int("x")
    assert cliargs.nonneg_float("0") == 0.0 and cliargs.positive_int("3") == 3
    assert cliargs.push("12.5@1") == (12.5, 1.0)
