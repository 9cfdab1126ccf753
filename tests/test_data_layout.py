"""PAGE XML and ALTO pages as line sources (data/layout.py, open_source) and `recognize --layout`, which
writes the same PAGE / ALTO back with the transcriptions (issue 13, points 1 and 2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from PIL import Image, ImageDraw

from bridgeocr.cli import main
from bridgeocr.data import layout
from bridgeocr.data.features import line_key
from bridgeocr.data.preprocess import image_size
from bridgeocr.data.sample import LineSample
from bridgeocr.data.sources import drop_reasons, open_source
from bridgeocr.errors import DataError
from conftest import tiny_ocr_model

PAPER, INK = 200, 0
PAGE_NS = {2013: "http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15",
           2019: "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"}
ALTO_NS = {2: "http://www.loc.gov/standards/alto/ns-v2#", 4: "http://www.loc.gov/standards/alto/ns-v4#"}


# ----------------------------------------------------------------------------------- tiny documents

def page_line(line_id: str, coords: str | None = None, baseline: str | None = None, text: str | None = None,
              equivs: list[tuple[str | None, str]] | None = None, words: list[str] | None = None) -> str:
    parts = [f'<TextLine id="{line_id}">']
    if coords is not None:
        parts.append(f'<Coords points="{coords}"/>')
    if baseline is not None:
        parts.append(f'<Baseline points="{baseline}"/>')
    for i, w in enumerate(words or []):
        parts.append(f'<Word id="{line_id}_w{i}"><Coords points="0,0 1,0 1,1"/>'
                     f"<TextEquiv><Unicode>{w}</Unicode></TextEquiv></Word>")
    for index, t in (equivs or ([(None, text)] if text is not None else [])):
        idx = f' index="{index}"' if index is not None else ""
        parts.append(f"<TextEquiv{idx}><Unicode>{t}</Unicode></TextEquiv>")
    parts.append("</TextLine>")
    return "\n        ".join(parts) + "\n      "


def page_xml(lines: list[str], image: str | None = "page.png", year: int = 2019, size=(320, 200)) -> str:
    img = f' imageFilename="{image}"' if image else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="{PAGE_NS[year]}">
  <Metadata><Creator>someone</Creator><Created>2026-01-01T00:00:00</Created>
    <LastChange>2026-01-01T00:00:00</LastChange></Metadata>
  <Page{img} imageWidth="{size[0]}" imageHeight="{size[1]}">
    <ImageRegion id="logo"><Coords points="1,1 9,1 9,9 1,9"/></ImageRegion>
    <TextRegion id="r1">
      <Coords points="0,0 319,0 319,199 0,199"/>
      {"".join(lines)}
      <TextEquiv><Unicode>the region's own text</Unicode></TextEquiv>
    </TextRegion>
  </Page>
</PcGts>
"""


def alto_line(line_id: str, words: list[str], polygon: str | None = None, baseline: str | None = None,
              box: tuple[int, int, int, int] | None = None, hyp: bool = False) -> str:
    attrs = f'ID="{line_id}"'
    if box:
        attrs += ' HPOS="{}" VPOS="{}" WIDTH="{}" HEIGHT="{}"'.format(*box)
    if baseline:
        attrs += f' BASELINE="{baseline}"'
    shape = f'<Shape><Polygon POINTS="{polygon}"/></Shape>' if polygon is not None else ""
    strings = "<SP/>".join(f'<String CONTENT="{w}"/>' for w in words) + ('<HYP CONTENT="¬"/>' if hyp else "")
    return f"<TextLine {attrs}>\n            {shape}\n            {strings}\n          </TextLine>\n          "


def alto_xml(lines: list[str], image: str | None = "page.png", version: int = 4, size=(320, 200)) -> str:
    info = f"<sourceImageInformation><fileName>{image}</fileName></sourceImageInformation>" if image else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="{ALTO_NS[version]}">
  <Description><MeasurementUnit>pixel</MeasurementUnit>{info}</Description>
  <Tags><OtherTag ID="LT1" LABEL="default" DESCRIPTION="line type default"/></Tags>
  <Layout>
    <Page ID="p1" WIDTH="{size[0]}" HEIGHT="{size[1]}" PHYSICAL_IMG_NR="1">
      <PrintSpace>
        <Illustration ID="ill1" HPOS="1" VPOS="1" WIDTH="8" HEIGHT="8"/>
        <TextBlock ID="b1">
          {"".join(lines)}
        </TextBlock>
      </PrintSpace>
    </Page>
  </Layout>
</alto>
"""


def make_page(path: Path, rects=(), size=(320, 200), polygons=()) -> Path:
    """A light page with dark rectangles / polygons as 'text'."""
    img = Image.new("L", size, PAPER)
    d = ImageDraw.Draw(img)
    for r in rects:
        d.rectangle(r, fill=INK)
    for poly in polygons:
        d.polygon(poly, fill=INK)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# an L-shaped polygon (ink inside it, a blot in its notch: inside its box, outside the polygon)
L_SHAPE = "20,20 119,20 119,29 70,29 70,39 20,39"
L_INK, L_BLOT = (30, 24, 60, 35), (90, 32, 110, 38)


# ------------------------------------------------------------------------------------------ reading

@pytest.mark.parametrize("year", [2013, 2019])
def test_page_xml_lines_text_ids_and_crops(tmp_path, year):
    make_page(tmp_path / "page.png", rects=[L_INK, L_BLOT, (30, 68, 100, 80), (30, 120, 90, 130)])
    write(tmp_path / "doc1.xml", page_xml([
        page_line("l1", coords=L_SHAPE, baseline="20,35 119,35", text="  Hello\tworld "),
        page_line("l2", coords="20,60 119,60 119,85 20,85", equivs=[("2", "later"), ("1", "main"), (None, "x")]),
        page_line("l3", coords="20,112 119,112 119,135 20,135", words=["by", "words"]),
        page_line("l4", baseline="20,80 119,80", text="baseline only"),
    ], year=year))
    src = open_source(tmp_path / "doc1.xml")
    assert [s.id for s in src] == ["doc1/l1", "doc1/l2", "doc1/l3", "doc1/l4"] and src.problems == []
    assert {s.group for s in src} == {"doc1"}  # a page's lines are scored together by `evaluate --by-group`
    assert [s.text for s in src] == ["Hello world", "main", "by words", "baseline only"]
    l1 = np.asarray(src[0].load_image())
    assert l1.shape == (20 + 8, 100 + 8) and src[0].load_image().mode == "L"
    assert (l1[24 - 16:35 - 16 + 1, 30 - 16:60 - 16 + 1] == INK).all()  # ink inside the polygon kept
    assert (l1[32 - 16:38 - 16 + 1, 90 - 16:110 - 16 + 1] == PAPER).all()  # the blot outside it: paper
    # PAGE baseline only, no height: a 40 px band (30 above, 10 below) around it
    l4 = src[3]
    assert l4.crop.what == "baseline band" and l4.load_image().size == (100 + 8, 41 + 8)
    for s in src:  # the size is known without reading the page, and it is the size read
        assert image_size(s) == s.crop.size == s.load_image().size


@pytest.mark.parametrize("version", [2, 4])
def test_alto_lines_text_hyphen_baseline_and_box(tmp_path, version):
    make_page(tmp_path / "scan.png", rects=[(30, 68, 100, 80)])
    points = "20,20 119,20 119,39 20,39" if version == 2 else "20 20 119 20 119 39 20 39"
    write(tmp_path / "alto.xml", alto_xml([
        alto_line("a1", ["  Hello ", "wor"], polygon=points, hyp=True),
        # ALTO <= 4.1: BASELINE is one number (the y of a horizontal baseline)
        alto_line("a2", ["by", "baseline"], baseline="80", box=(20, 65, 100, 20)),
        alto_line("a3", ["box", "only"], box=(20, 100, 100, 20)),
    ], image="scan.png", version=version))
    src = open_source(tmp_path / "alto.xml")
    assert [s.text for s in src] == ["Hello wor-", "by baseline", "box only"] and src.problems == []
    assert [s.id for s in src] == ["alto/a1", "alto/a2", "alto/a3"]
    a2 = src[1]
    # a band 15 px above / 5 px below the baseline y=80 (HEIGHT 20), x from HPOS..HPOS+WIDTH
    assert a2.crop.what == "baseline band" and a2.load_image().size == (101 + 8, 21 + 8)
    ink = np.asarray(a2.load_image())
    assert (ink[68 - 61:80 - 61 + 1, 30 - 16:100 - 16 + 1] == INK).all()
    assert src[2].crop.what == "box" and src[2].load_image().size == (101 + 8, 21 + 8)


def test_rotated_line_is_deskewed_along_its_baseline(tmp_path):
    angle = 8.0
    t = math.tan(math.radians(angle))
    x0, x1, y0 = 40, 280, 120

    def y(x, dy=0.0):
        return y0 + (x - x0) * t + dy

    ink = [(x0, y(x0, -14)), (x1, y(x1, -14)), (x1, y(x1, -2)), (x0, y(x0, -2))]
    make_page(tmp_path / "page.png", polygons=[ink])
    outline = [(x0, y(x0, -30)), (x1, y(x1, -30)), (x1, y(x1, 8)), (x0, y(x0, 8))]
    coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in outline)
    write(tmp_path / "rot.xml", page_xml([page_line("r1", coords=coords, baseline=f"{x0},{y0} {x1},{y(x1):.1f}",
                                                    text="tilted")]))
    (s,) = open_source(tmp_path / "rot.xml")
    assert s.crop.angle == pytest.approx(angle, abs=0.05)
    img = np.asarray(s.load_image())
    assert img.shape[::-1] == s.crop.size

    def ink_rows(a: np.ndarray, cols) -> float:
        rows, _ = np.nonzero(a[:, cols] < 100)
        return float(rows.mean())

    w = img.shape[1]
    left, right = slice(w // 8, w // 4), slice(3 * w // 4, 7 * w // 8)
    assert abs(ink_rows(img, left) - ink_rows(img, right)) < 1.5  # the baseline is horizontal now
    assert img.shape[0] < 55  # about the line's own height (38 px), not its tilted box (72 px)
    page = Image.open(tmp_path / "page.png")
    flat = np.asarray(layout.crop_line(page, outline, None))  # no baseline: no deskew, for comparison
    wf = flat.shape[1]
    assert abs(ink_rows(flat, slice(wf // 8, wf // 4)) - ink_rows(flat, slice(3 * wf // 4, 7 * wf // 8))) > 10
    assert flat.shape[0] > 75
    # outside the (rotated) polygon: the paper colour, not ink and not white
    assert img[0, 0] == PAPER and img[-1, -1] == PAPER


def test_polygon_fill_is_the_local_paper_colour(tmp_path):
    img = Image.new("L", (200, 80), 150)  # darker paper than usual
    d = ImageDraw.Draw(img)
    d.rectangle(L_INK, fill=INK)
    d.rectangle(L_BLOT, fill=INK)
    img.save(tmp_path / "grey.png")
    write(tmp_path / "grey.xml", page_xml([page_line("l1", coords=L_SHAPE, text="x")], image="grey.png"))
    (s,) = open_source(tmp_path / "grey.xml")
    crop = np.asarray(s.load_image())
    blot = crop[32 - 16:38 - 16 + 1, 90 - 16:110 - 16 + 1]
    assert (blot == 150).all()  # the blot outside the polygon became this page's paper, not white
    assert (crop[24 - 16:35 - 16 + 1, 30 - 16:60 - 16 + 1] == INK).all()


def test_bad_inputs_are_one_line_each_naming_file_and_element(tmp_path):
    d = tmp_path / "pages"
    make_page(d / "good.png", rects=[(30, 24, 60, 35)])
    write(d / "good.xml", page_xml([
        page_line("l1", coords="20,20 119,20 119,39 20,39", text="fine"),
        page_line("l2", coords="5,5 9,5", text="two points"),
        page_line("l3", coords="20,50 119,50 119,70 20,70"),  # no text
        page_line("l4", coords="1,1 2,2 3,3", text="zero area"),
    ], image="good.png"))
    write(d / "noimg.xml", alto_xml([alto_line("n1", ["a"], box=(1, 1, 20, 10)),
                                     alto_line("n2", ["b"], box=(1, 20, 20, 10))], image="nothere.jpg"))
    write(d / "broken.xml", "<PcGts><Page><TextLine")
    src = open_source(d)
    assert [s.id for s in src] == ["good/l1"]
    problems = src.problems
    assert len(problems) == 5, problems

    def one(*parts: str) -> str:
        hits = [p for p in problems if all(x in p for x in parts)]
        assert len(hits) == 1, (parts, problems)
        assert "\n" not in hits[0]
        return hits[0]

    one(str(d / "good.xml"), "TextLine l2", "degenerate polygon (2 points")
    one(str(d / "good.xml"), "TextLine l3", "no text; line skipped")
    one(str(d / "good.xml"), "TextLine l4", "degenerate polygon", "area 0")
    one(str(d / "noimg.xml"), "(Page)", "image file not found", "nothere.jpg", "2 lines skipped")
    one(str(d / "broken.xml"), "malformed XML", "file skipped")
    assert src.skipped == {"bad geometry": 2, "no text": 1, "missing image": 2, "unreadable file": 1}
    assert src.missing == 2
    assert drop_reasons(problems) == {"bad line geometry": 2, "no text": 1, "image not found": 2,
                                      "unreadable XML": 1}
    with pytest.raises(DataError, match="malformed XML"):  # broken.xml, the first file read
        open_source(d, strict=True)


def test_image_outside_the_folder_needs_allow_outside(tmp_path):
    make_page(tmp_path / "elsewhere" / "scan.png", rects=[(30, 24, 60, 35)])
    d = tmp_path / "pages"
    write(d / "p.xml", page_xml([page_line("l1", coords="20,20 119,20 119,39 20,39", text="x")],
                                image="../elsewhere/scan.png"))
    refused = open_source(d)
    assert len(refused) == 0 and len(refused.problems) == 1
    assert "leads outside" in refused.problems[0] and str(d / "p.xml") in refused.problems[0]
    allowed = open_source(d, allow_outside=True)
    assert len(allowed) == 1 and allowed.problems == []
    assert allowed[0].crop.page == str(tmp_path / "elsewhere" / "scan.png")


def _split_pages(n_docs: int = 10, per_doc: int = 3, root: Path | None = None) -> Path:
    make_page(root / "shared.png", size=(120, 60), rects=[(5, 5, 40, 15), (5, 30, 40, 40)])
    for doc in range(n_docs):
        for k in range(per_doc):
            write(root / f"doc{doc}_p{k}.xml", alto_xml([alto_line("a", ["x"], box=(2, 2, 60, 20)),
                                                         alto_line("b", ["y"], box=(2, 28, 60, 20))],
                                                        image="shared.png", size=(120, 60)))
    return root


def _stems(src) -> set[str]:
    return {s.id.split("/")[0] for s in src}


def test_splits_never_cross_pages_hash_document_and_split_file(tmp_path):
    d = _split_pages(root=tmp_path / "pages")
    everything = open_source(d)
    assert len(everything) == 60 and _stems(everything) == {f"doc{i}_p{k}" for i in range(10) for k in range(3)}
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        expect = {s for s in _stems(everything) if layout.hash_split(s) == split}
        if not expect:
            with pytest.raises(DataError, match="no pages for split"):
                open_source(d, split)
            continue
        src = open_source(d, split)
        seen[split] = _stems(src)
        assert seen[split] == expect and len(src) == 2 * len(expect)  # both lines of every page, no other
        assert [s.id for s in src] == [s.id for s in open_source(d, split)]  # deterministic
    stems = [s for v in seen.values() for s in v]
    assert len(stems) == len(set(stems)) == 30  # every page in exactly one split
    assert len(seen["train"]) > len(seen.get("val", ())) + len(seen.get("test", ()))  # mostly train
    # split_by="document": the pages of one document never cross splits either
    by_doc: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        try:
            src = open_source(d, split, split_by="document")
        except DataError:
            continue
        for stem in _stems(src):
            by_doc.setdefault(layout.document_of(stem), set()).add(split)
    assert len(by_doc) == 10 and all(len(v) == 1 for v in by_doc.values())
    # a split file: page stems or document names; a named page that is not there is a problem
    write(d / "split.tsv", "doc0_p0\ttest\ndoc0_p1\tvalid\ndoc1\ttrain\nghost\ttest\n")
    test = open_source(d, "test")
    assert _stems(test) == {"doc0_p0"} and test.missing == 1
    assert any("ghost" in p and "split.tsv:4" in p for p in test.problems)
    assert _stems(open_source(d, "val")) == {"doc0_p1"}
    assert _stems(open_source(d, "train")) == {"doc1_p0", "doc1_p1", "doc1_p2"}
    assert len(open_source(d)) == 60  # no split asked: every line, the split file unused


def test_list_file_single_file_and_unknown_folder(tmp_path):
    d = _split_pages(n_docs=2, per_doc=1, root=tmp_path / "pages")
    write(tmp_path / "pages" / "some.lst", "# two pages\ndoc0_p0.xml\n\ndoc1_p0.xml\n")
    write(tmp_path / "pages" / "some.txt", "doc1_p0.xml\n")
    assert _stems(open_source(d / "some.lst")) == {"doc0_p0", "doc1_p0"}
    assert _stems(open_source(d / "some.txt")) == {"doc1_p0"}
    assert _stems(open_source(d / "doc0_p0.xml")) == {"doc0_p0"}
    write(tmp_path / "out.lst", "pages/doc0_p0.xml\n../escape.xml\n")
    src = open_source(tmp_path / "out.lst")
    assert _stems(src) == {"doc0_p0"} and len(src.problems) == 1 and "leads outside" in src.problems[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unknown data source"):
        open_source(tmp_path / "empty")
    # our own output beside the input is never read back as another page
    (d / "doc0_p0.bridgeocr.xml").write_bytes((d / "doc0_p0.xml").read_bytes())
    assert len(open_source(d)) == 4


def test_crop_samples_feature_key_and_page_cache(tmp_path, monkeypatch):
    make_page(tmp_path / "page.png", rects=[(30, 24, 60, 35)])
    write(tmp_path / "p.xml", page_xml([page_line("l1", coords="20,20 119,20 119,39 20,39", text="a"),
                                        page_line("l2", coords="20,50 119,50 119,69 20,69", text="b")]))
    make_page(tmp_path / "q.png", rects=[(30, 24, 70, 35)])
    write(tmp_path / "q.xml", page_xml([page_line("l1", coords="20,20 119,20 119,39 20,39", text="a")],
                                       image="q.png"))
    a, b = open_source(tmp_path / "p.xml")
    (c,) = open_source(tmp_path / "q.xml")
    assert a.image_path is None and a.crop is not None
    keys = {line_key(a), line_key(b), line_key(c)}
    assert len(keys) == 3 and "" not in keys  # one key per line, not per page
    assert line_key(a) == line_key(open_source(tmp_path / "p.xml")[0])  # stable
    plain = LineSample(id="x", text="x", image_path=tmp_path / "page.png")  # ordinary samples: as before
    assert image_size(plain) == (320, 200) and plain.crop is None
    calls = []
    real = layout.load_line_image
    monkeypatch.setattr(layout, "load_line_image", lambda p, *w: (calls.append(p), real(p, *w))[1])
    layout._load_page.cache_clear()
    a.load_image(), b.load_image(), a.load_image()
    assert len(calls) == 1  # the page is read once for its lines
    c.load_image()
    assert len(calls) == 2
    (tmp_path / "page.png").unlink()
    layout._load_page.cache_clear()
    with pytest.raises(DataError, match=r"p\.xml.*TextLine l1.*image file not found|image file not found.*p\.xml"):
        a.load_image()


def test_data_check_on_a_folder(tmp_path, capsys):
    good = tmp_path / "good"
    make_page(good / "page.png", rects=[(30, 24, 60, 35)])
    write(good / "p.xml", page_xml([page_line("l1", coords="20,20 119,20 119,39 20,39", text="ab"),
                                    page_line("l2", coords="20,50 119,50 119,69 20,69", text="cd")]))
    assert main(["data", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "lines: 2" in out and "no problems found" in out
    bad = tmp_path / "bad"
    make_page(bad / "page.png")
    write(bad / "p.xml", page_xml([page_line("l1", coords="20,20 119,20 119,39 20,39", text="ab"),
                                   page_line("l2", coords="20,50 119,50 119,69 20,69")]))
    write(bad / "z.xml", "<alto><Layout>")
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s):" in out
    assert f"{bad / 'p.xml'}" in out and "TextLine l2" in out and f"{bad / 'z.xml'}: malformed XML" in out


def test_real_ehri_alto_pages(shared_data):
    pages = shared_data / "ehri_alto" / "pages"
    if not pages.is_dir():
        pytest.skip(f"real data not available: {pages} is absent")
    src = open_source(pages)
    assert src.pages == 42 and len(src) > 1000 and src.problems == []
    assert len({s.id for s in src}) == len(src)
    first = src[0]
    assert first.id == "EHRI-BF-19380509b_EN_01/eSc_line_0bdf4578" and first.text == "c/o 35, Lordship Park,"
    img = np.asarray(first.load_image())
    assert img.shape[::-1] == first.crop.size and np.median(img) > 150 and img.min() < 80
    split_pages = [_stems(open_source(pages, s)) for s in ("train", "val", "test")]
    assert sum(len(p) for p in split_pages) == 42 and len(set().union(*split_pages)) == 42


# ------------------------------------------------------------------------------------------ writing

@pytest.fixture
def fake_reader(monkeypatch):
    """OCRModel.read (what `recognize` and `evaluate` both call) reading each line as text that depends on
    its pixels: 1-3 words "ab" and the number of ink columns, a trailing space on odd widths. The tiny
    untrained model reads "" for everything, which could not show which line's text went where."""
    from bridgeocr.models.decoding import Hypothesis
    from bridgeocr.models.ocr import OCRModel

    def read(self, images, image_mask, beam=None, decoding=None):
        out = []
        for b in range(images.shape[0]):
            w = int(image_mask[b].sum())
            ink = int((images[b, 0, :, :w] > 0.5).any(dim=0).sum())
            text = " ".join(["ab"] * (1 + ink % 3) + [str(ink)]) + " " * (w % 2)
            out.append(Hypothesis(ids=[], text=text, confidence=-float(ink % 7) / 10 - 0.05))
        return out

    monkeypatch.setattr(OCRModel, "read", read)
    return read


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout_model") / "model"
    tiny_ocr_model().save_pretrained(d)
    return d


def run(capsys, args):
    code = main(["recognize", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _ns(tree) -> dict:
    return {"n": etree.QName(tree.getroot()).namespace}


def _expected(model_dir, xml: Path) -> dict[str, str]:
    """line id -> what the model reads in that line's crop (every line, those without text too)."""
    from bridgeocr import BridgeOCR

    page = layout.parse_layout(xml)
    image, _ = layout.resolve_image(page)
    pairs, _ = layout.page_samples(page, image, Image.open(image).size, keep_empty=True)
    ocr = BridgeOCR.from_pretrained(model_dir, device="cpu")
    return {line.id: r.text for (line, _), r in zip(pairs, ocr.recognize([s for _, s in pairs], decoding="gpt"))}


def test_recognize_page_xml_round_trip(model_dir, fake_reader, tmp_path, capsys):
    d = tmp_path / "pages"
    make_page(d / "page.png", rects=[(30, 24, 60, 35), (30, 55, 90, 66), (30, 90, 70, 100)])
    xml = write(d / "page.xml", page_xml([
        page_line("l1", coords="20,20 119,20 119,39 20,39", text="ground truth"),
        page_line("l2", coords="20,50 119,50 119,69 20,69", equivs=[("0", "old guess"), ("1", "alternative")]),
        page_line("l3", coords="20,85 119,85 119,105 20,105"),  # no text: read too
    ]))
    before = xml.read_bytes()
    code, out, err = run(capsys, ["--checkpoint", model_dir, "--gpt", d / "page.png", "--layout", xml,
                                  "--format", "page"])
    assert code == 0 and err == "", err
    result = d / "page.bridgeocr.xml"
    assert f"wrote {result} (3 lines)" in out
    assert xml.read_bytes() == before  # the input is untouched
    old, new = etree.parse(str(xml)), etree.parse(str(result))
    ns = _ns(new)
    expected = _expected(model_dir, xml)
    assert len(set(expected.values())) == 3 and all(expected.values())  # three different readings
    for line_id in ("l1", "l2", "l3"):
        line = new.find(f".//n:TextLine[@id='{line_id}']", ns)
        ours = line.findall("n:TextEquiv[@index='0']", ns)
        assert len(ours) == 1
        assert 0.0 <= float(ours[0].get("conf")) <= 1.0
        assert ours[0].findtext("n:Unicode", namespaces=ns) == expected[line_id]
    l1 = new.find(".//n:TextLine[@id='l1']", ns)
    assert [te.findtext("n:Unicode", namespaces=ns) for te in l1.findall("n:TextEquiv", ns)][1] == "ground truth"
    l2 = new.find(".//n:TextLine[@id='l2']", ns)
    texts = [te.findtext("n:Unicode", namespaces=ns) for te in l2.findall("n:TextEquiv", ns)]
    assert "old guess" not in texts and "alternative" in texts and len(texts) == 2  # index 0 replaced
    for path in (".//n:ImageRegion", "n:Metadata", ".//n:TextRegion/n:TextEquiv", ".//n:TextRegion/n:Coords"):
        assert etree.tostring(new.find(path, ns)) == etree.tostring(old.find(path, ns)), path
    assert new.find(".//n:Page", ns).attrib == old.find(".//n:Page", ns).attrib
    # reading the result as a source gives our text (index 0 is the lowest)
    assert {s.id.split("/")[1]: s.text for s in open_source(result)} == \
        {k: v.strip() for k, v in expected.items() if v.strip()}

    # --out the input's own folder: refused without --overwrite, in place with it
    code, out, err = run(capsys, ["--checkpoint", model_dir, d / "page.png", "--layout", xml, "--out", d])
    assert code == 1 and "would replace its input" in err and xml.read_bytes() == before
    code, out, err = run(capsys, ["--checkpoint", model_dir, "--gpt", d / "page.png", "--layout", xml,
                                  "--overwrite"])
    assert code == 0 and xml.read_bytes() != before
    assert len(etree.parse(str(xml)).findall(".//n:TextEquiv[@conf]", ns)) == 3


def test_recognize_alto_folder_round_trip(model_dir, fake_reader, tmp_path, capsys):
    d = tmp_path / "pages"
    for stem in ("a", "b"):
        make_page(d / f"{stem}.png", rects=[(30, 24, 60, 35), (30, 55, 90, 66)])
        write(d / f"{stem}.xml", alto_xml([
            alto_line("t1", ["old", "words"], polygon="20 20 119 20 119 39 20 39", box=(20, 20, 100, 20),
                      baseline="20 35 119 35", hyp=True),
            alto_line("t2", ["more"], box=(20, 50, 100, 20)),
        ], image=f"{stem}.png"))
    make_page(d / "c.png")  # an image without a layout
    inputs = {p: p.read_bytes() for p in d.glob("*.xml")}
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, ["--checkpoint", model_dir, "--gpt", d, "--layout", d, "--format", "alto",
                                  "--out", out_dir])
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        [f"error: {d / 'c.png'}: no PAGE / ALTO file for it in {d}; image skipped"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.xml", "b.xml"]
    assert all(p.read_bytes() == b for p, b in inputs.items())
    expected = _expected(model_dir, d / "a.xml")
    assert len({v.strip() for v in expected.values()}) == 2 and all(len(v.split()) > 1 for v in expected.values())
    old, new = etree.parse(str(d / "a.xml")), etree.parse(str(out_dir / "a.xml"))
    ns = _ns(new)
    for line_id in ("t1", "t2"):
        line = new.find(f".//n:TextLine[@ID='{line_id}']", ns)
        words = expected[line_id].split() or [""]
        strings = line.findall("n:String", ns)
        assert [s.get("CONTENT") for s in strings] == words
        assert len(line.findall("n:SP", ns)) == len(words) - 1 and line.findall("n:HYP", ns) == []
        wcs = {s.get("WC") for s in strings}
        assert len(wcs) == 1 and 0.0 <= float(wcs.pop()) <= 1.0
        hpos = [float(s.get("HPOS")) for s in strings]
        assert hpos == sorted(hpos) and 20 <= hpos[0] and float(strings[-1].get("HPOS")) + float(
            strings[-1].get("WIDTH")) <= 120.02
        assert [c.tag.split("}")[1] for c in line][0] == ("Shape" if line_id == "t1" else "String")
    for path in (".//n:Illustration", "n:Tags", "n:Description", ".//n:TextLine[@ID='t1']/n:Shape"):
        assert etree.tostring(new.find(path, ns)) == etree.tostring(old.find(path, ns)), path
    assert new.find(".//n:TextLine[@ID='t1']", ns).attrib == old.find(".//n:TextLine[@ID='t1']", ns).attrib


def test_recognize_layout_usage_errors(model_dir, tmp_path, capsys):
    make_page(tmp_path / "page.png", rects=[(30, 24, 60, 35)])
    xml = write(tmp_path / "page.xml", page_xml([page_line("l1", coords="20,20 119,20 119,39 20,39", text="x")]))
    code, _, err = run(capsys, ["--checkpoint", model_dir, tmp_path / "page.png", "--layout", xml,
                                "--format", "alto"])
    assert code == 1 and "a PAGE file" in err and "--format page" in err
    assert not (tmp_path / "page.bridgeocr.xml").exists()
    code, _, err = run(capsys, ["--checkpoint", model_dir, tmp_path / "page.png", "--format", "page"])
    assert code == 2 and "needs --layout" in err
    code, _, err = run(capsys, ["--checkpoint", model_dir, tmp_path / "page.png", "--layout", xml,
                                "--format", "tsv"])
    assert code == 2 and "--format page or --format alto" in err


def test_recognize_progress_bar_only_on_long_inputs(model_dir, tmp_path, capsys):
    d = tmp_path / "lines"
    d.mkdir()
    for i in range(101):
        make_page(d / f"l{i:03d}.png", size=(24, 16), rects=[(2, 3, 6 + i % 10, 12)])
    code, out, err = run(capsys, ["--checkpoint", model_dir, "--gpt", d, "--format", "tsv", "--batch-size", "64"])
    assert code == 0 and len(out.splitlines()) == 102
    assert "recognize" in err and "101/101" in err  # more than 100 lines: a bar on stderr, even off a TTY
    (d / "l100.png").unlink()
    code, out, err = run(capsys, ["--checkpoint", model_dir, "--gpt", d, "--format", "tsv", "--batch-size", "64"])
    assert code == 0 and err == ""  # 100 lines, no TTY: nothing on stderr


# --------------------------------------------------------------------------------- a real client

def test_dinglehopper_reads_our_output_and_agrees_with_evaluate(model_dir, fake_reader, tmp_path, capsys):
    pytest.importorskip("dinglehopper", reason="dinglehopper is not installed (pip install dinglehopper)")
    from dinglehopper.edit_distance import distance
    from dinglehopper.ocr_files import alto_extract_lines, page_extract
    from uniseg.graphemecluster import grapheme_clusters

    from bridgeocr.eval.evaluate import evaluate_model, load_checkpoint
    from bridgeocr.eval.metrics import cer

    d = tmp_path / "gt"
    make_page(d / "page.png", rects=[(30, 24, 60, 35), (30, 55, 90, 66), (30, 90, 70, 100)])
    boxes = [(20, 20, 100, 20), (20, 50, 100, 20), (20, 85, 100, 20)]
    truth = [["ab", "cd"], ["xyz"], ["bad", "cab", "dab"]]
    write(d / "page.xml", alto_xml([alto_line(f"t{i}", w, box=b) for i, (w, b) in enumerate(zip(truth, boxes))]))
    write(d / "pagexml.xml", page_xml([page_line(f"t{i}", coords=f"{x},{y} {x + w - 1},{y} {x + w - 1},{y + h - 1} "
                                                 f"{x},{y + h - 1}", text=" ".join(t))
                                       for i, (t, (x, y, w, h)) in enumerate(zip(truth, boxes))]))
    out = tmp_path / "ours"
    for xml in ("page.xml", "pagexml.xml"):
        code, _, err = run(capsys, ["--checkpoint", model_dir, "--gpt", "--batch-size", "1", d / "page.png",
                                    "--layout", d / xml, "--out", out])
        assert code == 0, err

    model, image_cfg, _ = load_checkpoint(model_dir)

    def evaluate(xml: str):
        res = evaluate_model(model, open_source(d / xml), image_cfg, batch_size=1, progress=False,
                             decoding="gpt")
        by_id = {i: (r, h) for i, r, h in zip(res["ids"], res["refs"], res["hyps"])}
        refs, hyps = (list(x) for x in zip(*(by_id[f"{Path(xml).stem}/t{i}"] for i in range(3))))
        return res, refs, hyps

    res, refs, hyps = evaluate("page.xml")
    assert refs == [" ".join(t) for t in truth] and all(hyps) and res["cer"] > 0

    def lines(tree_path):
        return {t.segment_id: t.text for t in alto_extract_lines(etree.parse(str(tree_path)))}

    gt, ours = lines(d / "page.xml"), lines(out / "page.xml")
    assert list(gt.values()) == refs
    assert list(ours.values()) == [" ".join(h.split()) for h in hyps]  # ALTO holds words: spaces collapsed
    d_sum = sum(distance(list(grapheme_clusters(gt[k])), list(grapheme_clusters(ours[k]))) for k in gt)
    n_sum = sum(len(list(grapheme_clusters(gt[k]))) for k in gt)
    assert d_sum / n_sum == pytest.approx(cer(refs, [" ".join(h.split()) for h in hyps]), abs=1e-12)
    # PAGE keeps the text exactly: line-level CER is evaluate's own
    res, refs, hyps = evaluate("pagexml.xml")
    pg_gt = page_extract(etree.parse(str(d / "pagexml.xml")), textequiv_level="line")
    pg_ours = page_extract(etree.parse(str(out / "pagexml.xml")), textequiv_level="line")
    gt_lines = [s.text for r in pg_gt.segments for s in r.segments]
    our_lines = [s.text for r in pg_ours.segments for s in r.segments]
    assert gt_lines == refs and our_lines == hyps
    # jiwer (evaluate's CER) strips each line's ends; dinglehopper counts every character: strip for it too
    d_sum = sum(distance(list(grapheme_clusters(a.strip())), list(grapheme_clusters(b.strip())))
                for a, b in zip(gt_lines, our_lines))
    assert d_sum / sum(len(a.strip()) for a in gt_lines) == pytest.approx(res["cer"], abs=1e-12)


def test_split_by_reaches_the_config_and_the_cli(tmp_path, capsys):
    """`data.split_by` / `--split-by document`: the same document split as `open_source(split_by=...)`."""
    from bridgeocr.cli import main
    from bridgeocr.config import load_config
    from bridgeocr.errors import ConfigError

    d = _split_pages(root=tmp_path / "pages")
    assert load_config(None, ["data.split_by=document"]).data.split_by == "document"
    with pytest.raises(ConfigError, match="data.split_by"):
        load_config(None, ["data.split_by=line"])
    split = next(s for s in ("test", "val", "train") if layout.hash_split(layout.document_of("doc0_p0")) == s)
    want = len(open_source(d, split, split_by="document"))
    assert main(["data", "check", str(d), "--split", split, "--split-by", "document"]) == 0
    assert f"lines: {want} " in capsys.readouterr().out
