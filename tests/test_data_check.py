from PIL import Image

from bridgeocr.cli import main


def _dataset(tmp_path, make_line_png):
    d = tmp_path / "ds"
    make_line_png(d / "good.png")
    make_line_png(d / "empty.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    Image.new("L", (400, 2), 255).save(d / "wide.png")  # aspect 200
    (d / "labels.tsv").write_bytes(
        b"good.png\thello world\n"
        b"empty.png\t\n"
        b"corrupt.png\tbroken\n"
        b"wide.png\ttoo wide\n"
        b"gone.png\tmissing file\n"
        b"good.png\tbad \xff bytes\n")
    return d


def test_check_reports_every_problem(tmp_path, make_line_png, capsys):
    d = _dataset(tmp_path, make_line_png)
    code = main(["data", "check", str(d)])
    out = capsys.readouterr().out
    assert code == 1
    assert "lines: 4" in out and "missing: 1" in out
    lab = str(d / "labels.tsv")
    assert f"{lab}:2: empty transcription" in out
    assert "corrupt.png" in out and f"{lab}:3" in out and "unreadable image" in out
    assert f"{lab}:4): absurd aspect ratio 400x2" in out
    assert "gone.png" in out and f"{lab}:5" in out and "not found" in out
    assert f"{lab}:6: text is not valid UTF-8" in out
    assert "'l':3" in out  # character counts
    assert "5 problem(s)" in out


def test_check_clean_source_and_errors(tmp_path, make_line_png, capsys):
    d = tmp_path / "clean"
    make_line_png(d / "a.png", 80, 20)
    (d / "m.tsv").write_text("a.png\tabc\n")
    assert main(["data", "check", str(d / "m.tsv")]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "image width at height 32: min 128" in out
    assert main(["data", "check", str(tmp_path / "missing_dir")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["data", "check", str(d / "m.tsv"), "--split", "train"]) == 2
    assert "no split file" in capsys.readouterr().err


def test_preview_writes_png(tmp_path, make_line_png, capsys):
    d = _dataset(tmp_path, make_line_png)
    out = tmp_path / "p" / "preview.png"
    assert main(["data", "preview", str(d), "--out", str(out), "--n", "3", "--seed", "1"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100
    assert "wrote" in capsys.readouterr().out
