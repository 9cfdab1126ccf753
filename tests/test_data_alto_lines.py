"""scripts/alto_lines.py: ALTO pages + images -> line crops, manifest.tsv and a page-wise split.tsv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import load_script

PAPER, INK = 200, 0


@pytest.fixture(scope="module")
def alto_lines():
    return load_script("scripts/alto_lines.py")


def alto(*lines: str, ns: str = "http://www.loc.gov/standards/alto/ns-v4#") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="{ns}">
  <Description><MeasurementUnit>pixel</MeasurementUnit></Description>
  <Layout><Page WIDTH="200" HEIGHT="120" ID="p"><PrintSpace><TextBlock ID="b">
    {"".join(lines)}
  </TextBlock></PrintSpace></Page></Layout>
</alto>"""


def text_line(line_id: str, words: list[str], polygon: str | None = None, baseline: str | None = None,
              height: int | None = None) -> str:
    attrs = f' ID="{line_id}"' + (f' BASELINE="{baseline}"' if baseline else "") \
        + (f' HEIGHT="{height}"' if height else "")
    shape = f'<Shape><Polygon POINTS="{polygon}"/></Shape>' if polygon is not None else ""
    strings = "<SP/>".join(f'<String CONTENT="{w}"/>' for w in words)
    return f"<TextLine{attrs}>{shape}{strings}</TextLine>\n"


# page "a": an L-shaped polygon line (ink inside, and a blot in the notch outside the polygon),
# a baseline-only line, a line without text and one with a degenerate polygon
L_SHAPE = "20 20 119 20 119 29 70 29 70 39 20 39"
PAGE_A = alto(
    text_line("l1", ["  Hello ", "world"], polygon=L_SHAPE, baseline="20 35 119 35"),
    text_line("l2", ["by", "baseline"], baseline="20 80 119 80", height=20),
    text_line("l3", ["", " "], polygon="20 95 119 95 119 110 20 110"),
    text_line("l4", ["flat"], polygon="10 10 50 10 90 10"),
)


def page_a_image() -> Image.Image:
    img = Image.new("L", (200, 120), PAPER)
    draw = ImageDraw.Draw(img)
    draw.rectangle((30, 24, 60, 35), fill=INK)  # "text" of l1, inside the polygon
    draw.rectangle((90, 32, 110, 38), fill=INK)  # a blot in the notch: inside l1's box, outside its polygon
    draw.rectangle((30, 68, 100, 80), fill=INK)  # "text" of l2, above its baseline
    return img


def one_line_page(word: str) -> str:
    return alto(text_line("x1", [word], polygon="10 10 60 10 60 30 10 30"))


@pytest.fixture
def pages(tmp_path: Path) -> Path:
    d = tmp_path / "pages"
    d.mkdir()
    (d / "a.xml").write_text(PAGE_A, encoding="utf-8")
    page_a_image().save(d / "a.png")
    for stem in ("b", "c", "d"):
        (d / f"{stem}.xml").write_text(one_line_page(stem), encoding="utf-8")
        Image.new("L", (100, 50), PAPER).save(d / f"{stem}.jpg")
    (d / "e.xml").write_text(one_line_page("e"), encoding="utf-8")  # no e.jpg
    (d / "f.xml").write_text("<alto><Layout><TextLine", encoding="utf-8")  # malformed
    return d


def test_manifest_split_and_crops(alto_lines, pages, tmp_path, capsys):
    out = tmp_path / "out"
    rc = alto_lines.main([str(pages), "--out", str(out), "--val-pages", "1", "--test-pages", "1"])
    assert rc == 0
    captured = capsys.readouterr()

    labels = (out / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    assert labels == ["lines/a/l1.png\tHello world", "lines/a/l2.png\tby baseline",
                      "lines/b/x1.png\tb", "lines/c/x1.png\tc", "lines/d/x1.png\td"]

    split_rows = [row.split("\t") for row in (out / "split.tsv").read_text().splitlines()]
    assert [r[0] for r in split_rows] == [row.split("\t")[0] for row in labels]
    page_split = {}
    for rel, split, page in split_rows:
        assert rel.startswith(f"lines/{page}/")
        assert page_split.setdefault(page, split) == split  # a page never crosses splits
    assert sorted(page_split) == ["a", "b", "c", "d"]
    assert sorted(page_split.values()) == ["test", "train", "train", "val"]

    # l1: the polygon's box 20..119 x 20..39 plus 4 px on each side
    l1 = np.asarray(Image.open(out / "lines/a/l1.png"))
    assert Image.open(out / "lines/a/l1.png").mode == "L"
    assert l1.shape == (20 + 8, 100 + 8)
    assert (l1[24 - 16:35 - 16 + 1, 30 - 16:60 - 16 + 1] == INK).all()  # ink inside the polygon kept
    assert (l1[32 - 16:38 - 16 + 1, 90 - 16:110 - 16 + 1] == PAPER).all()  # the blot outside it: paper
    assert (l1[:4] == PAPER).all() and (l1[:, :4] == PAPER).all()  # the pad
    # l2: a band 15 px above / 5 px below the baseline (HEIGHT 20), y 65..85
    l2 = np.asarray(Image.open(out / "lines/a/l2.png"))
    assert l2.shape == (21 + 8, 100 + 8)
    assert (l2[68 - 61:80 - 61 + 1, 30 - 16:100 - 16 + 1] == INK).all()
    # b: box 10..60 x 10..30 plus pad
    assert Image.open(out / "lines/b/x1.png").size == (51 + 8, 21 + 8)
    assert not (out / "lines/a/l3.png").exists() and not (out / "lines/a/l4.png").exists()
    assert not (out / "lines/e").exists()

    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 3, err
    assert any(str(pages / "a.xml") in e and "line l4" in e and "degenerate polygon" in e for e in err)
    assert any(str(pages / "e.xml") in e and "no image" in e for e in err)
    assert any(str(pages / "f.xml") in e and "unreadable ALTO" in e for e in err)
    summary = captured.out.strip().splitlines()[-1]
    assert "6 pages read, 4 with lines; 5 lines written" in summary
    for part in ("train 2 pages/", "val 1 pages/", "test 1 pages/", "empty text 1", "bad polygon 1",
                 "missing image (pages) 1", "malformed XML (pages) 1"):
        assert part in summary, summary

    # deterministic: the same seed gives the same split file; bridgeocr reads the result
    out2 = tmp_path / "out2"
    alto_lines.main([str(pages), "--out", str(out2), "--val-pages", "1", "--test-pages", "1"])
    assert (out2 / "split.tsv").read_text() == (out / "split.tsv").read_text()
    from bridgeocr.data.sources import open_source

    train = open_source(out / "manifest.tsv", "train", split_file=out / "split.tsv")
    assert len(train) == sum(1 for r in split_rows if r[1] == "train") and not train.problems
    assert train[0].load_image().mode == "L"


def test_nothing_written_exits_1(alto_lines, tmp_path, capsys):
    d = tmp_path / "pages"
    d.mkdir()
    (d / "e.xml").write_text(one_line_page("e"), encoding="utf-8")
    assert alto_lines.main([str(d), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "e.xml" in captured.err and "0 lines written" in captured.out
    assert alto_lines.main([str(tmp_path / "empty_missing"), "--out", str(tmp_path / "o")]) == 1


def test_parse_alto_other_namespace_and_comma_points(alto_lines, tmp_path):
    path = tmp_path / "v2.xml"
    path.write_text(alto(text_line("q", ["a", "b"], polygon="1,2 30,2 30,20 1,20"),
                         ns="http://www.loc.gov/standards/alto/ns-v2#"), encoding="utf-8")
    (line,) = alto_lines.parse_alto(path)
    assert line.id == "q" and line.text == "a b" and line.baseline is None
    assert line.polygon == [(1, 2), (30, 2), (30, 20), (1, 20)]


def test_crop_line_clips_to_image_and_default_band(alto_lines):
    img = Image.new("L", (50, 50), PAPER)
    assert alto_lines.crop_line(img, [(-10, -10), (20, -10), (20, 10), (-10, 10)], None, pad=4).size == (25, 15)
    # baseline only, no height: 40 px (30 above, 10 below), clipped at the bottom edge
    assert alto_lines.crop_line(img, None, [(5, 45), (25, 45)], pad=0).size == (21, 50 - 15)
    with pytest.raises(ValueError, match="outside"):
        alto_lines.crop_line(img, [(60, 60), (80, 60), (80, 80)], None, pad=0)
    with pytest.raises(ValueError, match="no polygon"):
        alto_lines.crop_line(img, None, None)
