"""benchmarks/startup.py: fresh-process timings of imports, model load, first and second line, and the command."""

from __future__ import annotations

import json

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/startup.py", "startup_bench")


def test_startup_times_every_stage_in_fresh_processes(bench, tmp_path, capsys):
    result = bench.main(["--repeats", "1", "--modules", "numpy", "no_such_module_here", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert result["imports"]["numpy"][0] >= 0 and result["imports"]["no_such_module_here"] == [None]
    stage = result["stages"][0]
    assert all(stage[k] > 0 for k in ("import bridgeocr.api", "load the model", "first line",
                                      "the same line again"))
    assert result["command"][0] > stage["the same line again"]  # a whole process costs more than one read
    assert result["text"].strip()  # the shipped model read the drawn line
    assert "| import no_such_module_here | not installed |" in out
    assert "| `bridgeocr recognize IMAGE`, the whole process |" in out
    assert json.loads((tmp_path / "startup.json").read_text())["repeats"] == 1


def test_a_missing_image_is_one_line_error(bench, tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        bench.main(["--image", str(tmp_path / "nope.png"), "--repeats", "1", "--modules"])
