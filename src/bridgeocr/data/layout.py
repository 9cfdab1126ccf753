"""PAGE XML and ALTO pages as line sources, and written back with a transcription.

Reading (`open_layout`, what `open_source` calls for a folder, a list file or a single file of
PAGE / ALTO XML):

- PAGE 2013 / 2019 (any `.../PAGE/gts/pagecontent/...` namespace, detected from the root `PcGts`)
  and ALTO v2-v4 (root `alto`, any namespace; coordinates in pixels, `MeasurementUnit` pixel).
- Every TextLine is one `LineSample`, id `page/line` (page: the XML's file stem; line: the element's
  ID, `line0001`... when it has none). Its text: PAGE the line's own TextEquiv (the one with the
  lowest `index`, else the first; without one, its Words' texts joined by spaces); ALTO the
  `String@CONTENT`s joined by single spaces (SP elements are those spaces; a HYP is kept as `-`).
  Tabs and line breaks in a text become spaces; it is stripped at both ends.
- Its image is a crop of the page image (`PageCrop`, cut when the sample is read; the page is cached
  per process, `PAGE_CACHE_SIZE` pages, LRU): the bounding box of the line's polygon (PAGE
  `Coords@points`, ALTO `Shape/Polygon@POINTS`) plus `pad` px, pixels outside the polygon filled with
  the local paper colour (the 90th percentile of the pixels inside it). Without a polygon: a band
  around the baseline (PAGE `Baseline@points`, ALTO `BASELINE`), 3/4 of the line height above and 1/4
  below, the height being ALTO's `HEIGHT` (else 40 px); an ALTO line with only HPOS/VPOS/WIDTH/HEIGHT
  is cut as that box. A line whose baseline slopes by more than `DESKEW_MIN_DEGREES` is rotated so
  that its baseline is horizontal (bilinear; such a crop is not clipped at the page edge: what lies
  outside the page is paper too).
- The page image: PAGE `Page@imageFilename`, ALTO `sourceImageInformation/fileName`, relative to the
  XML's folder; if that is not there, a file of that name beside the XML, then a same-stem image
  beside it (`.jpg`, `.jpeg`, `.png`, `.tif`, `.tiff`). An image path leading outside the source's
  folder is only followed with `allow_outside` (as manifests, decided on the lexical path).
- Splits never cut a page: with a split file (`page_stem<TAB>train|val|test`; `split.tsv` in the
  folder / beside the list file is found automatically; a row may also name a document, see
  `document_of`, to place all its pages) only the pages it names are in a split; without one a page's
  split is a hash of its stem (`hash_split`: 80 % train, 10 % val, 10 % test; stable across machines
  and runs, independent of the other pages), or of its document's name with `split_by="document"`.
- Every bad input is one line in `.problems` naming the XML file (line number) and the element:
  malformed XML (that file is skipped, the others read), a page whose image is missing, an empty or
  degenerate polygon (< 3 distinct points or zero area), a line without text (skipped and counted in
  `.skipped`), a duplicate line id. Files named `*.bridgeocr.xml` (what `recognize --layout` writes)
  are not read from a folder.

Writing (`write_page_result`, for `bridgeocr recognize --layout`): the input's lxml tree with the
transcriptions put in, every other element kept as it was. PAGE: each recognised TextLine gets a
`TextEquiv index="0" conf=...` with its `Unicode` (one with index 0 already there is replaced, else it
is added before the line's other TextEquivs; TextRegion and Word TextEquivs are left as they were).
ALTO: the line's String/SP/HYP children are replaced by one `String` per recognised word (CONTENT,
WC) with an `SP` between words; bridgeocr reads whole lines, so the word boxes are an estimate: the
line's box (HPOS/VPOS/WIDTH/HEIGHT, else its polygon's bounding box) is shared out in proportion to
the words' lengths (a space counting as one character), and every word's WC is the line's. `conf` /
`WC` is the line's probability per token, exp(mean token log-probability), in 0..1.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lxml import etree
from PIL import Image, ImageDraw

from bridgeocr.data.manifest import SplitRow, read_split_file
from bridgeocr.data.sample import LineSample, LineSource, canonical_split, load_line_image
from bridgeocr.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
DEFAULT_LINE_HEIGHT = 40  # px, for a baseline-only line without a height
BAND_ABOVE, BAND_BELOW = 0.75, 0.25  # share of the line height above / below the baseline
PAPER_PERCENTILE = 90
DESKEW_MIN_DEGREES = 0.5
DEFAULT_PAD = 4
PAGE_CACHE_SIZE = int(os.environ.get("BRIDGEOCR_PAGE_CACHE", "8") or 8)
SPLIT_SHARES = (("train", 0.8), ("val", 0.1), ("test", 0.1))
OUTPUT_SUFFIX = ".bridgeocr.xml"
CROP_VERSION = 1  # part of a crop's feature-cache key: bump when the cutting changes

Point = tuple[float, float]


class LayoutError(ValueError):
    """A PAGE / ALTO file that cannot be read at all (malformed XML, not PAGE or ALTO, not in pixels)."""


# ------------------------------------------------------------------------------------------ parsing

def _local(tag) -> str:
    """'{http://www.loc.gov/standards/alto/ns-v4#}TextLine' -> 'TextLine' (any namespace)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el, name: str) -> list:
    return [c for c in el if _local(c.tag) == name]


def _points(value: str | None) -> list[Point] | None:
    """"x1,y1 x2,y2 ..." (PAGE, ALTO v2/v3/4.2) or "x1 y1 x2 y2 ..." (ALTO 4.0/4.1, eScriptorium);
    None when absent, [] when unreadable."""
    if value is None:
        return None
    try:
        nums = [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        return []
    if len(nums) % 2 or not all(math.isfinite(v) for v in nums):
        return []
    return list(zip(nums[0::2], nums[1::2]))


def _number(value: str | None) -> float | None:
    try:
        v = float(value) if value is not None else None
    except ValueError:
        return None
    return v if v is None or math.isfinite(v) else None


def _clean(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ").strip()


@dataclass
class LayoutLine:
    """One TextLine as read: its geometry in page pixels and its text (may be "")."""

    id: str
    text: str
    polygon: list[Point] | None  # None: no polygon; []: one that could not be read
    baseline: list[Point] | None
    hpos: float | None = None
    vpos: float | None = None
    width: float | None = None
    height: float | None = None
    sourceline: int | None = None
    element: object = field(default=None, repr=False, compare=False)  # the lxml element


@dataclass
class LayoutPage:
    """One parsed PAGE / ALTO file."""

    path: Path
    kind: str  # "page" | "alto"
    tree: object = field(repr=False)  # lxml ElementTree
    image_name: str | None  # the image file as the XML names it
    lines: list[LayoutLine]
    page_sourceline: int | None = None

    @property
    def stem(self) -> str:
        return page_stem(self.path)


def page_stem(path: Path) -> str:
    name = Path(path).name
    if name.lower().endswith(OUTPUT_SUFFIX):
        return name[: -len(OUTPUT_SUFFIX)]
    return Path(name).stem


def _parser():
    # no entity expansion, no network: a stranger's XML cannot read local files or hang on a DTD
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def parse_layout(path) -> LayoutPage:
    """A PAGE or ALTO file (the kind from its root element); LayoutError if it cannot be read."""

    path = Path(path)
    try:
        tree = etree.parse(str(path), _parser())
    except etree.XMLSyntaxError as exc:
        raise LayoutError(f"malformed XML ({exc})") from None
    except OSError as exc:
        raise LayoutError(f"cannot read ({exc.strerror or exc})") from None
    root = tree.getroot()
    kind = _local(root.tag)
    if kind == "PcGts":
        return _parse_page(path, tree)
    if kind == "alto":
        return _parse_alto(path, tree)
    raise LayoutError(f"not a PAGE or ALTO file (root element <{kind}>)")


def _line_id(el, index: int, attr: str) -> str:
    return (el.get(attr) or "").strip() or f"line{index:04d}"


def _page_text(el) -> str:
    equivs = _children(el, "TextEquiv")
    if equivs:
        indexed = [(int(te.get("index")), i) for i, te in enumerate(equivs)
                   if re.fullmatch(r"-?\d+", (te.get("index") or "").strip())]
        te = equivs[min(indexed)[1]] if indexed else equivs[0]
        uni = _children(te, "Unicode")
        return _clean(uni[0].text or "") if uni else ""
    words = [_page_text(w) for w in _children(el, "Word")]
    return _clean(" ".join(w for w in words if w))


def _page_points(el) -> list[Point] | None:
    """A PAGE Coords / Baseline: `points` (2010+), or Point children (2010)."""
    if el is None:
        return None
    if el.get("points") is not None:
        return _points(el.get("points"))
    pts = _children(el, "Point")
    if pts:
        out = [(_number(p.get("x")), _number(p.get("y"))) for p in pts]
        return [] if any(x is None or y is None for x, y in out) else out
    return []


def _parse_page(path: Path, tree) -> LayoutPage:
    root = tree.getroot()
    pages = _children(root, "Page")
    if not pages:
        raise LayoutError("PAGE file without a Page element")
    page = pages[0]
    lines = []
    for index, el in enumerate((e for e in page.iter() if _local(e.tag) == "TextLine"), start=1):
        coords = _children(el, "Coords")
        base = _children(el, "Baseline")
        lines.append(LayoutLine(
            id=_line_id(el, index, "id"), text=_page_text(el),
            polygon=_page_points(coords[0]) if coords else None,
            baseline=_page_points(base[0]) if base else None,
            sourceline=el.sourceline, element=el))
    return LayoutPage(path, "page", tree, (page.get("imageFilename") or "").strip() or None, lines,
                      page.sourceline)


def _alto_baseline(value: str | None, hpos, width) -> list[Point] | None:
    """ALTO BASELINE: points (4.2+, eScriptorium) or one number, the y of a horizontal baseline (<= 4.1)."""
    if value is None or not value.strip():
        return None
    pts = _points(value)
    if pts:
        return pts
    y = _number(value)
    if y is not None and hpos is not None and width:
        return [(hpos, y), (hpos + width, y)]
    return None


def _alto_text(el) -> str:
    words: list[str] = []
    for child in el:
        name = _local(child.tag)
        if name == "String":
            words.append(child.get("CONTENT", ""))
        elif name == "HYP":
            if words:
                words[-1] += "-"
            else:
                words.append("-")
    return " ".join(" ".join(words).split())


def _parse_alto(path: Path, tree) -> LayoutPage:
    root = tree.getroot()
    unit = next((el.text for el in root.iter() if _local(el.tag) == "MeasurementUnit"), None)
    if unit and unit.strip() != "pixel":
        raise LayoutError(f"MeasurementUnit {unit.strip()!r} is not supported (only pixel)")
    image = None
    for info in (el for el in root.iter() if _local(el.tag) == "sourceImageInformation"):
        names = _children(info, "fileName")
        if names and (names[0].text or "").strip():
            image = names[0].text.strip()
            break
    page_el = next((el for el in root.iter() if _local(el.tag) == "Page"), None)
    lines = []
    for index, el in enumerate((e for e in root.iter() if _local(e.tag) == "TextLine"), start=1):
        polygon = None
        for shape in _children(el, "Shape"):
            for poly in _children(shape, "Polygon"):
                polygon = _points(poly.get("POINTS", ""))
        hpos, vpos, width, height = (_number(el.get(k)) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT"))
        lines.append(LayoutLine(
            id=_line_id(el, index, "ID"), text=_alto_text(el), polygon=polygon,
            baseline=_alto_baseline(el.get("BASELINE"), hpos, width), hpos=hpos, vpos=vpos, width=width,
            height=height, sourceline=el.sourceline, element=el))
    return LayoutPage(path, "alto", tree, image, lines, page_el.sourceline if page_el is not None else None)


# ----------------------------------------------------------------------------------------- geometry

def _area(points: list[Point]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def baseline_band(baseline: list[Point], height: float | None) -> list[Point]:
    h = height if height and height > 0 else DEFAULT_LINE_HEIGHT
    top = [(x, y - BAND_ABOVE * h) for x, y in baseline]
    bottom = [(x, y + BAND_BELOW * h) for x, y in reversed(baseline)]
    return top + bottom


def baseline_angle(baseline: list[Point] | None) -> float:
    """The baseline's slope in degrees (image coordinates, y down; -90..90); 0 without one."""
    if not baseline or len(baseline) < 2:
        return 0.0
    (x0, y0), (x1, y1) = baseline[0], baseline[-1]
    if x0 == x1 and y0 == y1:
        return 0.0
    angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
    if angle > 90:
        angle -= 180
    elif angle < -90:
        angle += 180
    return angle


def line_shape(polygon, baseline, height=None, box=None) -> tuple[list[Point], str]:
    """(the outline to cut, what it is): the polygon if given (even unusable), else the baseline band,
    else the box (hpos, vpos, width, height). ValueError when there is nothing."""
    if polygon is not None:
        return list(polygon), "polygon"
    if baseline is not None:
        if len(baseline) < 2:
            raise ValueError(f"degenerate baseline ({len(baseline)} points)")
        return baseline_band(list(baseline), height), "baseline band"
    if box is not None and None not in box:
        x, y, w, h = box
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)], "box"
    raise ValueError("no polygon and no baseline")


def _rotate(points, degrees: float) -> list[Point]:
    """The points rotated by -degrees about the origin (a baseline at `degrees` becomes horizontal)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [(c * x + s * y, -s * x + c * y) for x, y in points]


@dataclass(frozen=True)
class PageCrop:
    """A line image that is a part of a page image, cut when read (`LineSample.crop`).

    `shape`: the line's outline in page pixels; `angle`: the deskew rotation in degrees (0: none);
    `box`: (x0, y0, width, height) of the output in the page (angle 0) or the rotated frame.
    """

    page: str
    page_size: tuple[int, int]
    shape: tuple[Point, ...]
    angle: float
    box: tuple[int, int, int, int]
    what: str = "polygon"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the crop, without reading the page."""
        return self.box[2], self.box[3]

    def load(self, where: str | None = None) -> Image.Image:
        """The crop, 8-bit grayscale; DataError naming `where` if the page cannot be read."""
        page = load_page(self.page, where)
        try:
            return render_crop(page, self)
        except ValueError as exc:
            raise DataError(where or self.page, str(exc)) from None

    def key(self) -> str:
        """A content key for the feature cache: the page file's bytes and the geometry."""
        h = hashlib.blake2b(digest_size=16)
        h.update(_file_hash(self.page).encode())
        h.update(repr((CROP_VERSION, self.shape, round(self.angle, 6), self.box)).encode())
        return h.hexdigest()


def make_crop(page: str | Path, page_size: tuple[int, int], polygon, baseline, pad: int = DEFAULT_PAD,
              height: float | None = None, box=None, deskew: bool = True) -> PageCrop:
    """The crop of one line (no pixel read); ValueError naming what is wrong with its geometry."""
    shape, what = line_shape(polygon, baseline, height, box)
    if len(set(shape)) < 3 or _area(shape) < 1:
        raise ValueError(f"empty or degenerate {what} ({len(shape)} points, area {_area(shape):.0f})")
    width, height_px = page_size
    xs, ys = [x for x, _ in shape], [y for _, y in shape]
    if max(xs) < 0 or max(ys) < 0 or min(xs) >= width or min(ys) >= height_px:
        raise ValueError(f"{what} lies outside the {width}x{height_px} image")
    angle = baseline_angle(baseline) if deskew else 0.0
    if abs(angle) <= DESKEW_MIN_DEGREES:
        angle = 0.0
        x0, y0 = max(0, math.floor(min(xs)) - pad), max(0, math.floor(min(ys)) - pad)
        x1 = min(width, math.floor(max(xs)) + 1 + pad)
        y1 = min(height_px, math.floor(max(ys)) + 1 + pad)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{what} lies outside the {width}x{height_px} image")
    else:
        rot = _rotate(shape, angle)
        x0 = math.floor(min(x for x, _ in rot)) - pad
        y0 = math.floor(min(y for _, y in rot)) - pad
        x1 = math.floor(max(x for x, _ in rot)) + 1 + pad
        y1 = math.floor(max(y for _, y in rot)) + 1 + pad
    return PageCrop(str(page), (int(width), int(height_px)), tuple((float(x), float(y)) for x, y in shape),
                    float(angle), (int(x0), int(y0), int(x1 - x0), int(y1 - y0)), what)


def render_crop(page: Image.Image, crop: PageCrop) -> Image.Image:
    """Cut `crop` out of the (grayscale) page: outside the outline, the paper colour (the
    PAPER_PERCENTILE-th percentile of the pixels inside it). ValueError if it covers no page pixel."""
    page = page if page.mode == "L" else page.convert("L")
    x0, y0, w, h = crop.box
    if crop.angle == 0.0:
        region = page.crop((x0, y0, x0 + w, y0 + h))
        outline = [(x - x0, y - y0) for x, y in crop.shape]
        valid = np.ones((h, w), dtype=bool)
    else:
        c, s = math.cos(math.radians(crop.angle)), math.sin(math.radians(crop.angle))
        # output pixel (u, v) is the rotated-frame point (u + x0, v + y0); the page point is R(angle) of it
        coeffs = (c, -s, c * x0 - s * y0, s, c, s * x0 + c * y0)
        region = page.transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR,
                                fillcolor=255)
        outline = [(x - x0, y - y0) for x, y in _rotate(crop.shape, crop.angle)]
        u, v = np.meshgrid(np.arange(w) + 0.5 + x0, np.arange(h) + 0.5 + y0)
        px, py = c * u - s * v, s * u + c * v
        valid = (px >= 0) & (py >= 0) & (px < page.width) & (py < page.height)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255, outline=255)
    inside = (np.asarray(mask) > 0) & valid
    pixels = np.asarray(region)
    if not inside.any():
        raise ValueError(f"{crop.what} covers no pixel of the image")
    paper = int(round(float(np.percentile(pixels[inside], PAPER_PERCENTILE))))
    return Image.fromarray(np.where(inside, pixels, paper).astype(np.uint8), mode="L")


def crop_line(image: Image.Image, polygon, baseline, pad: int = DEFAULT_PAD, height: float | None = None,
              box=None, deskew: bool = True) -> Image.Image:
    """The grayscale crop of one line of `image` (see the module docstring); ValueError if unusable."""
    crop = make_crop("<memory>", image.size, polygon, baseline, pad, height, box, deskew)
    return render_crop(image.convert("L") if image.mode != "L" else image, crop)


def line_crop(page_image: str | Path, page_size, line: LayoutLine, pad: int = DEFAULT_PAD) -> PageCrop:
    return make_crop(page_image, page_size, line.polygon, line.baseline, pad, line.height,
                     (line.hpos, line.vpos, line.width, line.height))


@functools.lru_cache(maxsize=PAGE_CACHE_SIZE)
def _load_page(path: str, mtime_ns: int, size: int) -> Image.Image:
    return load_line_image(path)


def load_page(path: str | Path, where: str | None = None) -> Image.Image:
    """A page image as 8-bit grayscale, the last PAGE_CACHE_SIZE pages cached in this process."""
    path = str(path)
    shown = f"{path} (from {where})" if where else path
    try:
        st = os.stat(path)
        return _load_page(path, st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        raise DataError(shown, "image file not found") from None
    except DataError as exc:
        raise DataError(shown, exc.message) from None


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        _HASHES[key] = hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    return _HASHES[key]


# ------------------------------------------------------------------------------------- the source

def _lexical_inside(root: Path, full: str) -> bool:
    base = os.path.abspath(root)
    return full == base or full.startswith(base.rstrip(os.sep) + os.sep)


def resolve_image(page: LayoutPage, root: Path | None = None, allow_outside: bool = False
                  ) -> tuple[Path | None, str]:
    """(the page image, '') or (None, why not): the named file relative to the XML's folder, a file
    of that name beside the XML, a same-stem image beside the XML."""
    folder = page.path.parent
    root = Path(root) if root is not None else folder
    refused = ""
    candidates: list[Path] = []
    if page.image_name:
        declared = page.image_name.replace("\\", "/")
        if declared.lower().startswith("file://"):
            declared = declared[7:]
        full = os.path.normpath(os.path.join(os.path.abspath(folder), declared))
        if _lexical_inside(root, full) or allow_outside:
            candidates.append(Path(full))
        else:
            refused = f"; {declared!r} leads outside {root} (refused; allow with --allow-outside)"
        candidates.append(folder / Path(declared).name)
    stem = page.stem
    candidates += [folder / f"{stem}{s}" for s in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)]
    for cand in candidates:
        if cand.is_file():
            return cand, ""
    named = f"{page.image_name!r} named, " if page.image_name else ""
    return None, f"image file not found ({named}no {stem}.jpg/.png/.tif beside it{refused})"


def hash_split(name: str) -> str:
    """train / val / test for a page (or document) name: 80/10/10 by a hash of the name, stable."""
    h = int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big") / 2 ** 64
    acc = 0.0
    for split, share in SPLIT_SHARES:
        acc += share
        if h < acc:
            return split
    return SPLIT_SHARES[-1][0]


def document_of(stem: str) -> str:
    """A page's document: its stem without a trailing page number (`EHRI-BF-19380509b_EN_01` ->
    `EHRI-BF-19380509b_EN`, `letter-p3` -> `letter`); the stem itself if nothing is left."""
    doc = re.sub(r"[_\-. ]*(?:p|page|pg|f|fol)?\.?\d+$", "", stem, flags=re.IGNORECASE)
    return doc or stem


def layout_files(spec: Path, allow_outside: bool = False) -> tuple[list[Path], Path, list[str]]:
    """(XML files, the source's root folder, problems) for a folder, a list file or one XML file."""
    problems: list[str] = []
    if spec.is_dir():
        files = sorted(p for p in spec.iterdir() if p.is_file() and p.suffix.lower() == ".xml"
                       and not p.name.lower().endswith(OUTPUT_SUFFIX))
        return files, spec, problems
    if spec.suffix.lower() == ".xml":
        return [spec], spec.parent, problems
    root = spec.parent
    files = []
    for lineno, raw in enumerate(spec.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        rel = raw.strip()
        if not rel or rel.startswith("#"):
            continue
        full = os.path.normpath(os.path.join(os.path.abspath(root), rel))
        if not _lexical_inside(root, full) and not allow_outside:
            problems.append(f"{spec}:{lineno}: {rel!r} leads outside the list's folder {root} (refused; "
                            "allow with data.allow_outside / --allow-outside)")
            continue
        if not Path(full).is_file():
            problems.append(f"{spec}:{lineno}: {rel}: file not found")
            continue
        files.append(Path(full))
    return files, root, problems


def is_layout_list(path: Path) -> bool:
    """A text file whose first entry (not blank, not #) is an .xml path without a TAB."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                s = line.strip()
                if s and not s.startswith("#"):
                    return "\t" not in s and s.lower().endswith(".xml")
    except OSError:
        return False
    return False


def looks_like_layout_dir(path: Path) -> bool:
    return any(p.suffix.lower() == ".xml" and p.is_file() for p in path.iterdir())


def page_samples(page: LayoutPage, image: Path, page_size: tuple[int, int], pad: int = DEFAULT_PAD,
                 keep_empty: bool = False, counts: Counter | None = None
                 ) -> tuple[list[tuple[LayoutLine, LineSample]], list[str]]:
    """[(line, sample)] for the usable lines of a page, and one problem line per line that is not."""
    out, problems, first = [], [], {}
    counts = counts if counts is not None else Counter()
    for line in page.lines:
        where = f"{page.path}:{line.sourceline} (TextLine {line.id})"
        if not line.text and not keep_empty:
            counts["no text"] += 1
            problems.append(f"{where}: no text; line skipped")
            continue
        if line.id in first:
            counts["duplicate line id"] += 1
            problems.append(f"{where}: duplicate line id (first at line {first[line.id]}); line skipped")
            continue
        first[line.id] = line.sourceline
        try:
            crop = line_crop(image, page_size, line, pad)
        except ValueError as exc:
            counts["bad geometry"] += 1
            problems.append(f"{where}: {exc}; line skipped")
            continue
        out.append((line, LineSample(id=f"{page.stem}/{line.id}", text=line.text, origin=where, crop=crop,
                                     group=page.stem)))
    return out, problems


def page_image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; ValueError if unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, OSError, decompression bombs
        raise ValueError(f"unreadable image {path} ({type(exc).__name__})") from None


def open_layout(spec, split: str | None = None, *, split_file=None, strict: bool = False,
                allow_outside: bool = False, split_by: str = "page", pad: int = DEFAULT_PAD):
    """PAGE / ALTO pages (a folder, a list file of XML paths or one XML file) as a LineSource.

    See the module docstring. `split`: None for every line, else train/val/test. `strict`: raise the
    first problem as a DataError instead of recording it. `.skipped`: lines left out, by reason.
    """
    if split_by not in ("page", "document"):
        raise DataError(str(spec), f"split_by must be 'page' or 'document', got {split_by!r}")
    spec = Path(spec)
    files, root, problems = layout_files(spec, allow_outside)
    if not files and not problems:
        raise DataError(str(spec), "no PAGE / ALTO .xml files found")
    want = canonical_split(split) if split is not None else None
    split_path = Path(split_file) if split_file else (root / "split.tsv" if (root / "split.tsv").is_file()
                                                       else None)
    named: dict[str, SplitRow] | None = None
    if want is not None and split_path is not None:
        named = {re.sub(r"\.xml$", "", k, flags=re.IGNORECASE): v
                 for k, v in read_split_file(split_path, problems, strict).items()}
    reader = _PageReader(root, problems, strict, allow_outside, pad)
    if strict and problems:
        reader.problem(problems.pop(0))
    reader.read_all(files, want, lambda stem: _page_split(stem, named, split_by))
    if named is not None:
        reader.missing += _report_unread_pages(named, want, reader.seen_stems, split_path, spec, problems)
    if want is not None and not reader.splits_seen.get(want):
        how = f"split file {split_path}" if named is not None else f"{split_by} hash split (80/10/10)"
        have = ", ".join(f"{k} {v}" for k, v in sorted(reader.splits_seen.items())) or "none"
        raise DataError(str(spec), f"no pages for split {split!r} ({how}; pages per split: {have}); "
                        "give a split file (page_stem<TAB>train|val|test) or use every line")
    name = (spec.name if spec.is_dir() else f"{spec.parent.name}/{spec.name}") + (f":{want}" if want else "")
    src = LineSource(reader.samples, name, missing=reader.missing, problems=problems, root=root, split=want)
    src.skipped = dict(reader.counts)
    src.pages = reader.pages_read
    return src


def _page_split(stem: str, named: dict[str, SplitRow] | None, split_by: str) -> str | None:
    """A page's split: the split file's row for the page or its document (None: not listed), else the
    hash of its stem or of its document's name."""
    if named is not None:
        entry = named.get(stem) or named.get(document_of(stem))
        return entry.split if entry else None
    return hash_split(document_of(stem) if split_by == "document" else stem)


def _report_unread_pages(named: dict[str, SplitRow], want: str, seen_stems: set[str], split_path: Path,
                         spec: Path, problems: list[str]) -> int:
    """A split-file row for the wanted split that names neither a page read nor their document is one
    problem line (never raised, even when strict) -> how many there were."""
    missing = 0
    for stem, row in named.items():
        if row.split == want and stem not in seen_stems and not any(document_of(x) == stem for x in seen_stems):
            missing += 1
            problems.append(f"{split_path}:{row.lineno}: {stem} is not a page of {spec}")
    return missing


class _PageReader:
    """What `open_layout` gathers while it reads the pages of one split: the samples, the problems (raised at
    once as a DataError when `strict`), the lines left out by reason (`counts`) and missing, the pages read,
    their stems, and how many pages each split has."""

    def __init__(self, root: Path, problems: list[str], strict: bool, allow_outside: bool, pad: int):
        self.root, self.problems, self.strict = root, problems, strict
        self.allow_outside, self.pad = allow_outside, pad
        self.samples: list[LineSample] = []
        self.counts: Counter = Counter()
        self.missing, self.pages_read = 0, 0
        self.seen_stems: set[str] = set()
        self.splits_seen: Counter = Counter()

    def problem(self, msg: str) -> None:
        """Record `msg` ("where: what"), or raise it when strict."""
        if self.strict:
            where, _, rest = msg.partition(": ")
            raise DataError(where, rest)
        self.problems.append(msg)

    def read_all(self, files: list[Path], want: str | None, page_split) -> None:
        """Read each file of split `want` (None: every file), counting the pages per split on the way; a
        second page of the same stem is skipped."""
        for xml in files:
            stem = page_stem(xml)
            s = page_split(stem) if want is not None else None
            if s is not None:
                self.splits_seen[s] += 1
            if want is not None and s != want:
                continue
            if stem in self.seen_stems:
                self.problem(f"{xml}: a page named {stem!r} was already read; file skipped")
                continue
            self.seen_stems.add(stem)
            self._read_page(xml)

    def _read_page(self, xml: Path) -> None:
        """One XML's usable lines as samples; a file, page image or line that cannot be used is a problem."""
        try:
            page = parse_layout(xml)
        except LayoutError as exc:
            self.counts["unreadable file"] += 1
            self.problem(f"{xml}: {exc}; file skipped")
            return
        self.pages_read += 1
        page_where = f"{xml}:{page.page_sourceline} (Page)" if page.page_sourceline else f"{xml} (Page)"
        if not page.lines:
            self.problem(f"{page_where}: no TextLine; file skipped")
            return
        image, why = resolve_image(page, self.root, self.allow_outside)
        if image is None:
            self._skip_lines(page, page_where, "missing image", why)
            return
        try:
            size = page_image_size(image)
        except ValueError as exc:
            self._skip_lines(page, page_where, "unreadable image", str(exc))
            return
        pairs, page_problems = page_samples(page, image, size, self.pad, counts=self.counts)
        for msg in page_problems:
            self.problem(msg)
        self.samples.extend(sample for _, sample in pairs)

    def _skip_lines(self, page: LayoutPage, page_where: str, reason: str, why: str) -> None:
        """All lines of a page whose image cannot be used are missing, counted under `reason`."""
        self.missing += len(page.lines)
        self.counts[reason] += len(page.lines)
        self.problem(f"{page_where}: {why}; {len(page.lines)} lines skipped")


# ------------------------------------------------------------------------------------------ writing

def _insert_before(parent, new, names: tuple[str, ...]) -> None:
    """Put `new` before the first child whose local name is in `names`, else at the end."""
    for i, child in enumerate(parent):
        if _local(child.tag) in names:
            prev = parent[i - 1] if i else None
            new.tail = (prev.tail if prev is not None else parent.text) or None
            parent.insert(i, new)
            return
    last = parent[-1] if len(parent) else None
    if last is not None:  # the new last child closes the parent; the old one is indented as the first
        inner = parent.text if parent.text and not parent.text.strip() else last.tail
        new.tail, last.tail = last.tail, inner
    parent.append(new)


def _conf(confidence: float) -> str:
    p = math.exp(confidence) if confidence is not None and math.isfinite(confidence) else 0.0
    return f"{min(1.0, max(0.0, p)):.4f}"


def _set_page_line(line: LayoutLine, text: str, confidence: float) -> None:
    el = line.element
    ns = el.tag[: -len("TextLine")]
    equivs = _children(el, "TextEquiv")
    te = next((t for t in equivs if (t.get("index") or "").strip() == "0"), None)
    if te is None:
        te = el.makeelement(f"{ns}TextEquiv", {})
        _insert_before(el, te, ("TextEquiv", "TextStyle", "UserDefined", "Labels"))
    else:
        for child in list(te):
            te.remove(child)
        te.text = None
    te.set("index", "0")
    te.set("conf", _conf(confidence))
    uni = te.makeelement(f"{ns}Unicode", {})
    uni.text = text
    te.append(uni)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-6 else f"{v:.2f}"


def _set_alto_line(line: LayoutLine, text: str, confidence: float) -> None:
    el = line.element
    ns = el.tag[: -len("TextLine")]
    kids = [c for c in el if _local(c.tag) in ("String", "SP", "HYP")]
    at = el.index(kids[0]) if kids else len(el)
    before = el[at - 1] if at else None
    inner = (before.tail if before is not None else el.text) if (kids or len(el)) else None
    closing = kids[-1].tail if kids else (el[-1].tail if len(el) else None)
    for child in kids:
        el.remove(child)
    if None not in (line.hpos, line.vpos, line.width, line.height):
        x, y, w, h = line.hpos, line.vpos, line.width, line.height
    else:
        pts = line.polygon or (baseline_band(line.baseline, line.height) if line.baseline else None)
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
        else:
            x = y = w = h = None
    words = text.split() or [""]
    total = sum(len(wd) for wd in words) + len(words) - 1
    unit = (w / total) if (w is not None and total > 0) else None
    wc = _conf(confidence)
    new, pos = [], 0
    for i, word in enumerate(words):
        attrs = {"CONTENT": word, "WC": wc}
        if unit is not None:
            attrs.update(HPOS=_fmt(x + pos * unit), VPOS=_fmt(y), WIDTH=_fmt(len(word) * unit), HEIGHT=_fmt(h))
        elif w is not None:  # nothing read: one empty String over the whole line
            attrs.update(HPOS=_fmt(x), VPOS=_fmt(y), WIDTH=_fmt(w), HEIGHT=_fmt(h))
        new.append(el.makeelement(f"{ns}String", attrs))
        pos += len(word)
        if i < len(words) - 1:
            sp_attrs = {"WIDTH": _fmt(unit), "HPOS": _fmt(x + pos * unit), "VPOS": _fmt(y)} if unit else {}
            new.append(el.makeelement(f"{ns}SP", sp_attrs))
            pos += 1
    for k, item in enumerate(new):
        item.tail = inner if k < len(new) - 1 else closing
        el.insert(at + k, item)


def set_line_result(page: LayoutPage, line: LayoutLine, text: str, confidence: float) -> None:
    """Put one line's transcription and confidence into the page's tree (see the module docstring)."""
    (_set_page_line if page.kind == "page" else _set_alto_line)(line, text, confidence)


def write_layout(page: LayoutPage, out: Path) -> Path:
    """Write the page's tree to `out` (atomically: a temporary file, then a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    docinfo = page.tree.docinfo
    try:  # `standalone` only when the input declared it
        with open(page.path, "rb") as f:
            declared = b"standalone" in f.readline()
    except OSError:
        declared = False
    page.tree.write(str(tmp), xml_declaration=True, encoding=docinfo.encoding or "UTF-8",
                    standalone=docinfo.standalone if declared else None)
    os.replace(tmp, out)
    return out


def write_page_result(page: LayoutPage, results: dict[str, tuple[str, float]], out: Path) -> Path:
    """`results`: line id -> (text, confidence) for the lines read; the others are left as they were."""
    for line in page.lines:
        if line.id in results:
            set_line_result(page, line, *results[line.id])
    return write_layout(page, out)
