"""`edgeliquid firmware` refuses bad names, paths and metadata with one line, exit 2, nothing written."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model

from edgeliquid.cli.main import main
from edgeliquid.model.cell import LTCModel
from edgeliquid.model.file import save
from firmware_export import CodegenError, export_firmware
from firmware_export.cgen import MAX_NAME, check_name

DEMO = Path(__file__).resolve().parents[1] / "edgeliquid" / "data" / "cartpole_ncp.onnx"


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file bytes, or the link's target for a symlink."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "->" + os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


def _fails(capsys, argv: list[str], *expect: str) -> str:
    rc = main(["firmware", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeliquid firmware: error: "), err
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


BAD_NAMES = [
    ("pol\n", "not a C identifier"),  # `$` matched before a trailing newline
    ("pol\r", "not a C identifier"),
    ("a-b", "not a C identifier"),
    ("3abc", "not a C identifier"),
    ("_x", "not a C identifier"),  # leading underscore: reserved at file scope
    ("__x", "not a C identifier"),
    ("p\u00f6l", "not a C identifier"),
    ("../pol", "not a C identifier"),
    ("", "empty"),
    ("a" * (MAX_NAME + 1), f"longer than {MAX_NAME}"),
    ("a" * 300, f"longer than {MAX_NAME}"),
    ("edgeliquid_proto", "codec"),
    ("EDGELIQUID_PROTO", "codec"),
    ("elq", "codec"),
    ("elq_rx", "codec"),
    ("int", "reserved"),
    ("INT", "reserved"),
    ("_Bool", "not a C identifier"),
    ("alignas", "reserved"),
    ("thread_local", "reserved"),
    ("NULL", "reserved"),
    ("main", "reserved"),
    ("uint8_t", "reserved"),
    ("con", "Windows"),
    ("LPT1", "Windows"),
]
HEADERS = (
    "assert complex ctype errno fenv float inttypes iso646 limits locale math setjmp signal stdalign "
    "stdarg stdatomic stdbit stdbool stdckdint stddef stdint stdio stdlib stdnoreturn string tgmath "
    "threads time uchar wchar wctype"
).split()


@pytest.mark.parametrize("name,why", BAD_NAMES + [(h, "") for h in HEADERS] + [("Math", "<math.h>")])
def test_bad_names_one_line_error_nothing_written(tmp_path, capsys, name, why):
    out = tmp_path / "out"
    line = _fails(capsys, [str(DEMO), "-o", str(out), "--name", name], "--name", why)
    assert len(line) < 200  # a 300-character name is cut in the message
    assert not out.exists() and list(tmp_path.iterdir()) == []
    if name in HEADERS:
        assert f"<{name}.h>" in line or "reserved" in line  # float/assert are keywords/macros too


@pytest.mark.parametrize("good", ["policy", "cartpole_v2", "P", "a" * MAX_NAME, "stdint2", "elqx", "mathx"])
def test_good_names_accepted(good):
    assert check_name(good) == good


def test_symlink_in_output_refused_target_unchanged(tmp_path, capsys):
    out, target = tmp_path / "out", tmp_path / "elsewhere.h"
    out.mkdir()
    target.write_text("precious\n")
    for stem in ("policy.h", "policy.c", "edgeliquid_proto.h", "manifest.json"):
        (out / stem).unlink(missing_ok=True)
        (out / stem).symlink_to(target)
        before = _tree(tmp_path)
        _fails(capsys, [str(DEMO), "-o", str(out)], str(out / stem), "symbolic link")
        assert target.read_text() == "precious\n"
        assert _tree(tmp_path) == before  # nothing else written either (all checks come first)
        (out / stem).unlink()


def test_dangling_symlink_and_directory_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "policy.h").symlink_to(tmp_path / "created_by_the_export.h")
    _fails(capsys, [str(DEMO), "-o", str(out)], "symbolic link")
    assert not (tmp_path / "created_by_the_export.h").exists()
    (out / "policy.h").unlink()
    (out / "policy.c").mkdir()
    _fails(capsys, [str(DEMO), "-o", str(out)], "not a regular file")
    assert _tree(out) == {"policy.c": "dir"}


def test_existing_regular_files_replaced_hard_link_not_written_through(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.h"
    outside.write_text("precious\n")
    os.link(outside, out / "policy.h")  # a hard link: writing in place would change outside.h
    (out / "manifest.json").write_text("old")
    assert main(["firmware", str(DEMO), "-o", str(out)]) == 0
    assert outside.read_text() == "precious\n"
    assert "policy_step" in (out / "policy.h").read_text()
    assert json.loads((out / "manifest.json").read_text())["name"] == "policy"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["policy.h", "policy.c", "edgeliquid_proto.h", "edgeliquid_proto.c", "manifest.json"]
    )  # no temporary files left behind


def test_output_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _fails(capsys, [str(DEMO), "-o", str(f)], f"-o {f}", "not a directory")
    _fails(capsys, [str(DEMO), "-o", str(f / "sub")], f"-o {f / 'sub'}", "cannot create")
    assert f.read_text() == "x" and _tree(tmp_path) == {"afile": b"x"}


def test_bad_model_paths(tmp_path, capsys):
    _fails(capsys, [str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o")], "missing.onnx", "cannot read")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n" * 10)
    _fails(capsys, [str(text), "-o", str(tmp_path / "o")], "notes.txt")
    _fails(capsys, [str(tmp_path), "-o", str(tmp_path / "o")], "not a regular file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block forever
    _fails(capsys, [str(fifo), "-o", str(tmp_path / "o")], "not a regular file")
    assert not (tmp_path / "o").exists()


def _model_with(tmp_path, **info) -> Path:
    m = random_model(np.random.default_rng(0), units=6, n_in=3, motors=2)
    p = tmp_path / "m.onnx"
    save(LTCModel(m.config, m.params, roles=m.roles, info=info), p)
    return p


@pytest.mark.parametrize(
    "info,why",
    [
        ({"input_names": "a,b"}, "input_names lists 2 entries for 3 channels"),
        ({"output_units": "N,N,N"}, "output_units lists 3 entries for 2 channels"),
        ({"input_normalization": "not json"}, "input_normalization is not JSON"),
        ({"input_normalization": "[" * 60000}, "input_normalization is not JSON"),
        ({"input_normalization": json.dumps({"offset": [0, 0], "scale": [1, 1]})}, "2 offsets and 2 scales"),
        ({"input_normalization": json.dumps({"offset": [0, 0, 0]})}, "is not JSON"),
        ({"input_normalization": '{"offset": [0, 0, 0], "scale": [1, NaN, 1]}'}, "not a finite float32"),
        ({"input_normalization": json.dumps({"offset": [0, 1e39, 0], "scale": [1, 1, 1]})}, "finite float32"),
    ],
)
def test_bad_channel_metadata_one_line_error(tmp_path, capsys, info, why):
    path = _model_with(tmp_path, **info)
    _fails(capsys, [str(path), "-o", str(tmp_path / "o")], str(path), why)
    assert not (tmp_path / "o").exists()


def test_min_elapsed_checked_by_the_library(tmp_path):
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e9):
        with pytest.raises(CodegenError, match="--min-elapsed"):
            export_firmware(DEMO, tmp_path / "o", "p", fixed_point=True, min_elapsed=bad)
    assert not (tmp_path / "o").exists()
