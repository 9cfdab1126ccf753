import json

import pytest

from bridgeocr.data.sources import LineSource, open_source
from bridgeocr.errors import DataError

LINES_TXT = """\
#--- lines.txt ---------------------------------------------------------------#
#
# iam database line information
#
# format: a01-000u-00 ok 154 19 408 746 1663 91 A|MOVE|to|stop|Mr.|Gaitskell|from
#
a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from
a01-000u-01 ok 156 19 395 932 1850 105 nominating|any|more|Labour|life|Peers
a01-000u-02 err 157 16 408 1106 1986 105 "|It|'s|no|use|,|"|he|said
a01-000x-00 ok 154 10 408 746 1661 89 image|is|missing
b02-100-00 ok 160 12 400 700 1600 90 the|end|.
"""


@pytest.fixture
def iam(tmp_path, make_line_png):
    root = tmp_path / "iam"
    (root / "ascii").mkdir(parents=True)
    (root / "ascii" / "lines.txt").write_text(LINES_TXT)
    for lid in ("a01-000u-00", "a01-000u-01", "a01-000u-02", "b02-100-00"):
        form = "-".join(lid.split("-")[:2])
        make_line_png(root / "lines" / form.split("-")[0] / form / f"{lid}.png")
    splits = root / "splits"
    splits.mkdir()
    (splits / "trainset.txt").write_text("a01-000u\na01-000x-00\nzzz-999-00\n")
    (splits / "validationset1.txt").write_text("b02-100-00\n")
    (splits / "test.uttlist").write_text("a01-000u-01\nb02-100-00\n")
    return root


def test_iam_all_lines(iam):
    src = open_source(iam)
    assert isinstance(src, LineSource)
    assert [s.id for s in src] == ["a01-000u-00", "a01-000u-01", "a01-000u-02", "b02-100-00"]
    assert src[0].text == "A MOVE to stop Mr. Gaitskell from"
    assert src[2].text == "\" It 's no use , \" he said"
    assert src.missing == 1 and "a01-000x-00.png" in src.problems[0]
    assert src[0].origin.endswith("lines.txt:7")
    assert src[0].load_image().mode == "L"
    assert len(open_source(iam, drop_err=True)) == 3


def test_iam_line_groups_are_writers_from_forms_txt_else_forms(iam):
    assert [s.group for s in open_source(iam)] == ["a01-000u"] * 3 + ["b02-100"]
    (iam / "ascii" / "forms.txt").write_text("# form writer ...\na01-000u 000 2 prt 7 5 52 36\n")
    assert [s.group for s in open_source(iam, "test")] == ["writer 000", "b02-100"]  # b02-100 is not listed


def test_iam_splits(iam):
    train = open_source(iam, "train")  # form id + line id whose image is missing + unknown id
    assert [s.id for s in train] == ["a01-000u-00", "a01-000u-01", "a01-000u-02"]
    assert train.missing == 2
    assert any("zzz-999-00" in p and "trainset.txt:3" in p for p in train.problems)
    assert len(open_source(iam, "train", drop_err=True)) == 2
    assert [s.id for s in open_source(iam, "val")] == ["b02-100-00"]
    test = open_source(iam, "test")  # Aachen name; list order kept
    assert [s.id for s in test] == ["a01-000u-01", "b02-100-00"] and test.missing == 0
    # explicit split dir and a list path
    assert len(open_source(iam, "val", iam_split_dir=iam / "splits")) == 1
    assert len(open_source(iam, str(iam / "splits" / "trainset.txt"))) == 3
    with pytest.raises(DataError, match="val2"):
        open_source(iam, "val2")
    with pytest.raises(DataError, match="unknown IAM split"):
        open_source(iam, "bogus")


@pytest.fixture
def manifest_dir(tmp_path, make_line_png):
    d = tmp_path / "m"
    for i in range(4):
        make_line_png(d / "img" / f"{i}.png")
    (d / "manifest.tsv").write_text(
        "# comment\nimg/0.png\tzero\nimg/1.png\tone\tstill text\nthis row has no tab\n"
        "img/2.png\ttwo\nimg/9.png\tnine\nimg/3.png\tthree\n")
    (d / "split.tsv").write_text("img/0.png\ttrain\tg0\nimg/1.png\ttrain\tg0\nimg/2.png\tval\tg1\n"
                                 "img/3.png\ttest\tg2\nimg/7.png\tval\tg1\n")
    return d


def test_manifest_tsv_and_split(manifest_dir):
    src = open_source(manifest_dir)
    assert [s.text for s in src] == ["zero", "one\tstill text", "two", "three"]
    assert src.missing == 1  # img/9.png
    assert any("manifest.tsv:4" in p and "no TAB" in p for p in src.problems)
    assert src[0].origin.endswith("manifest.tsv:2") and src[0].id == "img/0"
    train = open_source(manifest_dir, "train")
    assert [s.text for s in train] == ["zero", "one\tstill text"] and train.missing == 0
    val = open_source(manifest_dir / "manifest.tsv", "val")
    assert [s.text for s in val] == ["two"]
    assert val.missing == 1 and any("split.tsv:5" in p for p in val.problems)
    with pytest.raises(DataError, match="manifest.tsv:4"):
        open_source(manifest_dir, strict=True)


def test_manifest_groups_come_from_the_split_files_third_column(manifest_dir, monkeypatch):
    assert [s.group for s in open_source(manifest_dir, "train")] == ["g0", "g0"]
    assert [s.group for s in open_source(manifest_dir)] == ["g0", "g0", "g1", "g2"]  # every line: still grouped
    (manifest_dir / "split.tsv").write_text("img/0.png\ttrain\nimg/2.png\tval\tg1\n")
    assert [s.group for s in open_source(manifest_dir)] == ["", "", "g1", ""]  # no column, no row: no group
    from bridgeocr.data import manifest

    def unreadable(path, problems, strict=False):
        raise DataError(str(path), "cannot read (Permission denied)")

    monkeypatch.setattr(manifest, "read_split_file", unreadable)  # not needed for every line: they are read
    assert [s.group for s in open_source(manifest_dir)] == ["", "", "", ""]
    with pytest.raises(DataError, match="Permission denied"):  # needed for a split: the error stands
        open_source(manifest_dir, "train")
    monkeypatch.undo()
    (manifest_dir / "split.tsv").unlink()
    assert [s.group for s in open_source(manifest_dir)] == ["", "", "", ""]


def test_manifest_non_utf8_and_jsonl(tmp_path, make_line_png):
    make_line_png(tmp_path / "a.png")
    (tmp_path / "x.tsv").write_bytes(b"a.png\tgood\na.png\tbad \xff\xfe text\n")
    src = open_source(tmp_path / "x.tsv")
    assert len(src) == 1 and "x.tsv:2" in src.problems[0] and "UTF-8" in src.problems[0]
    rows = [{"image": "a.png", "text": "hello", "id": "h1"}, {"image": "a.png"}, "oops"]
    (tmp_path / "y.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    src = open_source(tmp_path / "y.jsonl")
    assert [(s.id, s.text) for s in src] == [("h1", "hello")]
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in src.problems] == ["2", "3", "4"]


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(DataError, match="nope"):
        open_source(tmp_path / "nope")
    with pytest.raises(DataError, match="unknown data source"):
        open_source(tmp_path)
    (tmp_path / "m.tsv").write_text("a.png\tx\n")
    with pytest.raises(DataError, match="no split file"):
        open_source(tmp_path / "m.tsv", "train")


def test_hooker(shared_data):
    root = shared_data / "hooker_htr"
    train, val = open_source(root, "train"), open_source(root, "val")
    assert len(train) == 5248 and len(val) == 1036
    assert train.missing == 0 and val.missing == 0
    assert not {s.id for s in train} & {s.id for s in val}
