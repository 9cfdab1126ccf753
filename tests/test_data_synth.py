import hashlib
import json
import random
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from bridgeocr.cli import main
from bridgeocr.data.corpus import cut_lines, read_corpus
from bridgeocr.data.sources import open_source
from bridgeocr.data.synth import fonts as fonts_mod
from bridgeocr.data.synth import make_dataset
from bridgeocr.data.synth.fonts import BENCHMARK_ONLY_KEYS, benchmark_only, classify, covers, find_fonts
from bridgeocr.errors import DataError

TTF = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONTS = [str(TTF / f) for f in ("DejaVuSans.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf")]


def _hashes(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((d / "images").rglob("*")) if p.is_file()}


def test_corpus_builtin_and_cut_lines(tmp_path):
    docs = read_corpus()
    assert len(docs) >= 5 and sum(map(len, docs)) > 5000
    lines = cut_lines(docs, random.Random(0), min_chars=15, max_chars=80)
    assert len(lines) > 100
    assert all(15 <= len(x) <= 80 and x == x.strip() and "  " not in x for x in lines)
    words = set(" ".join(docs).split())
    assert all(w in words for x in lines[:50] for w in x.split())  # cut at word boundaries
    (tmp_path / "c.txt").write_text("one two three four five six seven\n<|endoftext|>\n\nsecond doc here ok")
    assert read_corpus([tmp_path / "c.txt"]) == ["one two three four five six seven", "second doc here ok"]
    with pytest.raises(DataError, match="nope.txt"):
        read_corpus([tmp_path / "nope.txt"])


def test_fonts_and_glyph_coverage():
    fonts, _ = find_fonts(FONTS)
    assert len(fonts) == 3
    assert covers(FONTS[0], "Hello, world!") and not covers(FONTS[0], "\ue000")
    with pytest.raises(DataError, match="nope.ttf"):
        find_fonts(["/nope.ttf"])


def test_synth_deterministic_disjoint(tmp_path):
    kw = dict(corpus=None, n=12, fonts=FONTS, val_fraction=0.25, test_fraction=0.25, height=24, seed=5,
              progress=False)
    s1 = make_dataset(out=tmp_path / "a", **kw)
    make_dataset(out=tmp_path / "b", **kw)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "manifest.tsv").read_bytes() == (b / "manifest.tsv").read_bytes()
    assert (a / "split.tsv").read_bytes() == (b / "split.tsv").read_bytes()
    assert _hashes(a) == _hashes(b) and len(_hashes(a)) == 12
    assert s1["counts"] == {"train": 6, "val": 3, "test": 3}
    settings = json.loads((a / "settings.json").read_text())
    assert settings["seed"] == 5 and settings["counts"]["train"] == 6 and len(settings["fonts"]) == 3
    splits = {name: open_source(a, name) for name in ("train", "val", "test")}
    texts = {k: {s.text for s in v} for k, v in splits.items()}
    assert len(texts["train"]) == 6 and not (texts["train"] & texts["val"] or texts["train"] & texts["test"]
                                             or texts["val"] & texts["test"])
    img = splits["val"][0].load_image()
    assert img.height == 24 and img.width > 24
    make_dataset(out=tmp_path / "c", **{**kw, "seed": 6})
    assert (tmp_path / "c" / "manifest.tsv").read_bytes() != (a / "manifest.tsv").read_bytes()


def test_synth_holdout_fonts_and_cli(tmp_path, capsys):
    out = tmp_path / "h"
    code = main(["data", "synth", "--out", str(out), "--n", "10", "--fonts", *FONTS, "--holdout-fonts", "mono",
                 "--height", "20", "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "1"])
    assert code == 0 and "wrote 10 lines" in capsys.readouterr().out
    rows = [r.split("\t") for r in (out / "split.tsv").read_text().splitlines()]
    assert {f for _, s, f in rows if s != "train"} == {"DejaVu Sans Mono Book"}
    assert all("Mono" not in f for _, s, f in rows if s == "train")
    with Image.open(out / rows[0][0]) as im:
        assert im.height == 20
    assert main(["data", "synth", "--out", str(out), "--n", "4", "--fonts", *FONTS,
                 "--holdout-fonts", "nosuchfont"]) == 2
    assert "nosuchfont" in capsys.readouterr().err


def _fake_install(root: Path) -> Path:
    """A font folder laid out like /usr/share/fonts: two training fonts and one in a benchmark-only
    package's folder (real DejaVu files, so no Debian font package is needed)."""
    import shutil

    for folder, name in (("dejavu", "DejaVuSans.ttf"), ("dejavu", "DejaVuSansMono.ttf"),
                         ("kaushanscript", "DejaVuSerif-Italic.ttf")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(TTF / name, root / folder / name)
    return root


def _rows(out: Path) -> list[list[str]]:
    return [r.split("\t") for r in (out / "split.tsv").read_text().splitlines()]


def test_benchmark_only_keys_classified_and_not_in_ci():
    for path in ("/usr/share/fonts/opentype/kaushanscript/KaushanScript-Regular.otf",
                 "/usr/share/fonts/truetype/ecolier-court/Ecolier-court.ttf",
                 "/usr/share/fonts/opentype/bwht/BecauseWeConnect-Regular.otf",
                 "/usr/share/fonts/truetype/rufscript/Rufscript010.ttf",
                 "/usr/share/fonts/truetype/leckerli-one/LeckerliOne-Regular.ttf",
                 "/usr/share/fonts/opentype/lobster/lobster.otf"):
        assert benchmark_only(path) and classify(path) == "handwriting", path
    for path in ("/usr/share/fonts/opentype/ebgaramond/EBGaramond12-Regular.otf",  # the print held-out set's
                 "/usr/share/fonts/opentype/linux-libertine/LinLibertine_R.otf",
                 "/usr/share/fonts/opentype/linux-libertine/LinBiolinum_R.otf",
                 "/usr/share/fonts/truetype/crosextra/Caladea-Regular.ttf",
                 "/usr/share/fonts/truetype/crosextra/Carlito-Regular.ttf"):
        assert benchmark_only(path) and classify(path) == "printed", path
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                 "/usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf",
                 "/usr/share/fonts/opentype/dancingscript/DancingScript-Regular.otf",
                 "/usr/share/fonts/truetype/fifthhorseman/FifthHorsemanHandwriting.ttf"):
        assert not benchmark_only(path), path
    # the fonts our shipped models trained on (.ci/run) must not overlap the benchmark-only ones
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    packages = [w for w in ci.split() if w.startswith("fonts-")]
    assert len(packages) >= 10
    assert not [(k, p) for k in BENCHMARK_ONLY_KEYS for p in packages if k in p]


def test_benchmark_only_fonts_never_train(tmp_path, monkeypatch):
    monkeypatch.setattr(fonts_mod, "FONT_DIRS", [str(_fake_install(tmp_path / "fonts"))])
    found, _ = find_fonts()
    assert {f.name: f.style for f in found}["DejaVu Serif Italic"] == "handwriting"
    kw = dict(corpus=None, n=40, val_fraction=0.25, test_fraction=0.25, height=20, seed=3, progress=False)

    # installed but not named: used nowhere, whatever the style
    for style in ("all", "handwriting"):
        if style == "handwriting":
            with pytest.raises(DataError, match="benchmark-only"):
                make_dataset(out=tmp_path / "hw", style=style, **kw)
            continue
        s = make_dataset(out=tmp_path / "a", style=style, **kw)
        assert s["counts"] == {"train": 20, "val": 10, "test": 10}
        assert all(f != "DejaVu Serif Italic" for _, _, f in _rows(tmp_path / "a"))
        used = {f["name"]: f["used_for"] for f in s["fonts"]}
        assert used["DejaVu Serif Italic"] == "none (benchmark-only)" and used["DejaVu Sans Book"] == "all"

    # held out by another name: the benchmark-only font still stays out of every split
    make_dataset(out=tmp_path / "m", holdout_fonts=["mono"], **kw)
    rows = _rows(tmp_path / "m")
    assert {f for _, s, f in rows if s == "train"} == {"DejaVu Sans Book"}
    assert {f for _, s, f in rows if s != "train"} == {"DejaVu Sans Mono Book"}

    # named with holdout_fonts: val/test only, never train (even passed explicitly with fonts=)
    explicit = sorted(str(p) for p in (tmp_path / "fonts").rglob("*.ttf"))
    for extra in ({}, {"fonts": explicit}):
        s = make_dataset(out=tmp_path / "b", holdout_fonts=["serif"], **kw, **extra)
        rows = _rows(tmp_path / "b")
        assert {f for _, s_, f in rows if s_ != "train"} == {"DejaVu Serif Italic"}
        assert {f for _, s_, f in rows if s_ == "train"} == {"DejaVu Sans Book", "DejaVu Sans Mono Book"}
    s = make_dataset(out=tmp_path / "c", holdout_fonts=["mono", "serif"], **kw)
    assert "DejaVu Serif Italic" not in {f for _, s_, f in _rows(tmp_path / "c") if s_ == "train"}


def test_benchmark_set_all_test_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fonts_mod, "FONT_DIRS", [str(_fake_install(tmp_path / "fonts"))])
    out = tmp_path / "bench"
    args = ["data", "synth", "--out", str(out), "--n", "12", "--style", "handwriting", "--height", "20"]
    assert main(args) == 2 and "benchmark-only" in capsys.readouterr().err  # not named: nothing to use
    assert main(args + ["--holdout-fonts", "serif", "--val-fraction", "0", "--test-fraction", "1"]) == 0
    assert "train 0, val 0, test 12" in capsys.readouterr().out
    assert {(s, f) for _, s, f in _rows(out)} == {("test", "DejaVu Serif Italic")}
    assert main(args + ["--holdout-fonts", "serif", "--val-fraction", "0.6", "--test-fraction", "0.6"]) == 2
