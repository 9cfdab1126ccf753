"""benchmarks/peers.py: table, a missing peer is skipped with a message (no heavy peer is run here)."""

from __future__ import annotations

import json

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def peers():
    return load_script("benchmarks/peers.py")


def test_table_and_skip(peers, tmp_path, monkeypatch, capsys):
    from PIL import Image

    rows = ["path\ttext"]
    for i, t in enumerate(["ab", "cd"]):
        Image.new("L", (40, 16), 255).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png\t{t}")
    (tmp_path / "m.tsv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(peers, "available", lambda peer: (False, f"needs {peer}"))
    monkeypatch.setattr(peers, "DEFAULT_PEER_PYTHON", tmp_path / "no-python")
    assert peers.main(["--data", str(tmp_path / "m.tsv"), "--split", "all", "--peers", "tesseract,rapidocr",
                       "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "tesseract: skipped (needs tesseract;" in out and "rapidocr: skipped" in out
    data = json.loads((tmp_path / "out" / "peers.json").read_text())
    assert [r["system"] for r in data] == ["tesseract", "rapidocr"] and all("skipped" in r for r in data)
    table = peers.format_table([{"set": "s", "system": "x", "lines": 2, "cer": 0.5, "wer": 1.0,
                                 "lines_per_s": 3.0, "engine": "e"}])
    assert "| s | x | 2 | 0.5000 | 1.0000 | 3.0 | e |" in table
