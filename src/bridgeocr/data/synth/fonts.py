"""Finding usable fonts, classifying them (printed / handwriting) and checking glyph coverage."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from bridgeocr.errors import DataError

FONT_DIRS = ["/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts"]
FONT_EXTS = (".ttf", ".otf", ".pfb", ".t1")
# Debian font packages (by install folder) whose fonts look handwritten
HANDWRITING_KEYS = ("handwriting", "fifthhorseman", "dkg", "breip", "dancingscript", "humor-sans",
                    "humor", "kristi", "comic-neue", "comicneue", "femkeklaver", "sjfonts", "klee")
# Handwriting-style Debian font packages reserved for benchmarks (by install folder / file name): they
# count as handwriting, but `make_dataset` never renders a *training* line with them (even when installed
# or passed with --fonts), and val/test use them only when named with --holdout-fonts. So a set made
# with them (docs/benchmarks.md, "Peers on the same lines") reads fonts that no model trained on
# `bridgeocr data synth` output has seen. None of these packages is installed by .ci/run:
#   fonts-bwht (Because We Build/Connect/Create/Learn/Mentor/Organize), fonts-kaushanscript (Kaushan
#   Script), fonts-ecolier-court and fonts-ecolier-lignes-court (Ecolier), fonts-rufscript (Rufscript),
#   fonts-leckerli-one (Leckerli One), fonts-lobster (Lobster Two)
BENCHMARK_HAND_KEYS = ("bwht", "becausewe", "kaushanscript", "ecolier", "rufscript", "leckerli", "lobster")
# Print font packages reserved the same way: the print held-out set (benchmarks/ppocr_table.sh) is rendered in
# them, so no training line may be, on a machine that has them installed. Not installed by .ci/run either:
#   fonts-ebgaramond (EB Garamond), fonts-linuxlibertine (Linux Libertine / Biolinum), fonts-crosextra-caladea,
#   fonts-crosextra-carlito
BENCHMARK_PRINT_KEYS = ("ebgaramond", "linux-libertine", "linlibertine", "linbiolinum", "crosextra", "caladea",
                        "carlito")
BENCHMARK_ONLY_KEYS = BENCHMARK_HAND_KEYS + BENCHMARK_PRINT_KEYS
# not text fonts
EXCLUDE_KEYS = ("dingbat", "symbol", "d050000l", "standardsymbols", "cursor", "opensymbol", "emoji")


@dataclass(frozen=True)
class FontInfo:
    path: str
    name: str  # "Family Style"
    style: str  # printed | handwriting


def classify(path: str) -> str:
    low = path.lower()
    return "handwriting" if any(k in low for k in HANDWRITING_KEYS + BENCHMARK_HAND_KEYS) else "printed"


def benchmark_only(path: str) -> bool:
    """True for a font reserved for benchmarks (BENCHMARK_ONLY_KEYS): never used for training lines."""
    low = str(path).lower()
    return any(k in low for k in BENCHMARK_ONLY_KEYS)


@lru_cache(maxsize=4096)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=256)
def _notdef(path: str) -> tuple:
    font = load_font(path, 32)
    out = set()
    for ch in ("\ue000", "\U0010fffd", "\uffff"):
        m = font.getmask(ch)
        out.add((m.size, bytes(m)))
    return tuple(out)


_COVER: dict[tuple[str, str], bool] = {}


def has_glyph(path: str, ch: str) -> bool:
    """True if the font draws `ch` (whitespace always; else a non-empty mask unlike .notdef)."""
    if ch.isspace():
        return ch == " "
    key = (path, ch)
    hit = _COVER.get(key)
    if hit is None:
        font = load_font(path, 32)
        m = font.getmask(ch)
        hit = m.getbbox() is not None and (m.size, bytes(m)) not in _notdef(path)
        _COVER[key] = hit
    return hit


def covers(path: str, text: str) -> bool:
    return all(has_glyph(path, ch) for ch in set(text))


def _ink_height(font: ImageFont.FreeTypeFont, ch: str) -> int:
    box = font.getbbox(ch, anchor="ls")
    return box[3] - box[1]


def usable(path: str) -> tuple[bool, str]:
    """(ok, reason): loads, covers basic Latin, lowercase is not small caps."""
    try:
        font = load_font(path, 40)
    except OSError:
        return False, "cannot load"
    if not covers(path, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,"):
        return False, "missing basic Latin glyphs"
    x, big_x = _ink_height(font, "x"), _ink_height(font, "X")
    if big_x <= 0 or x / big_x > 0.85:
        return False, "lowercase is (small) capitals"
    m1, m2 = font.getmask("a"), font.getmask("b")
    if bytes(m1) == bytes(m2):
        return False, "identical glyphs"
    return True, ""


def _scan(paths) -> list[str]:
    files = []
    for p in paths:
        p = Path(os.path.expanduser(str(p)))
        if p.is_file():
            files.append(str(p))
        elif p.is_dir():
            for ext in FONT_EXTS:
                files.extend(glob.glob(str(p / "**" / f"*{ext}"), recursive=True))
    return sorted(set(files))


def matplotlib_fonts() -> list[str]:
    try:
        # lazy: matplotlib is slow to import and only plots need it
        import matplotlib

        return [str(Path(matplotlib.get_data_path()) / "fonts" / "ttf")]
    except Exception:  # pragma: no cover
        return []


def find_fonts(fonts=None, style: str = "all") -> tuple[list[FontInfo], list[str]]:
    """Usable fonts of `style` (all | printed | handwriting) and a list of rejected 'path: reason'.

    `fonts`: files or directories; default the system font folders, else matplotlib's DejaVu.
    Duplicates (same family and style name, e.g. URW Type 1 and OpenType copies) are kept once,
    preferring OpenType/TrueType.
    """
    if style not in ("all", "printed", "handwriting"):
        raise DataError("--style", f"unknown font style {style!r}")
    if fonts:
        for f in fonts:
            if not Path(os.path.expanduser(str(f))).exists():
                raise DataError(str(f), "font file or directory not found")
        files = _scan(fonts)
    else:
        files = _scan(FONT_DIRS)
        if not any(classify(f) == "printed" or style != "printed" for f in files):
            files += _scan(matplotlib_fonts())
        if not files:
            files = _scan(matplotlib_fonts())
    files.sort(key=lambda f: (f.lower().endswith((".pfb", ".t1")), f))
    found: dict[str, FontInfo] = {}
    rejected = []
    for f in files:
        low = f.lower()
        if any(k in low for k in EXCLUDE_KEYS):
            rejected.append(f"{f}: not a text font")
            continue
        kind = classify(f)
        if style != "all" and kind != style:
            continue
        ok, why = usable(f)
        if not ok:
            rejected.append(f"{f}: {why}")
            continue
        family, sub = load_font(f, 40).getname()
        name = f"{family} {sub}".strip()
        if name in found:
            continue
        found[name] = FontInfo(f, name, kind)
    result = sorted(found.values(), key=lambda fi: (fi.style, fi.name))
    if not result:
        raise DataError(", ".join(map(str, fonts or FONT_DIRS)), f"no usable {style} fonts found")
    return result, rejected
