"""The IAM Handwriting Database's on-disk layout.

    ROOT/ascii/lines.txt                 a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from
    ROOT/lines/a01/a01-000u/a01-000u-00.png
    ROOT/ascii/forms.txt                 a01-000u 000 2 prt 7 5 52 36   (optional: form id, writer id, ...)

`lines.txt` fields: line id, segmentation result (ok | err), graylevel, number of components, x y w h,
then the transcription with `|` between words (-> spaces). `#` starts a comment line. `err` lines are
kept unless `drop_err`. A line's group (scores per group: `evaluate --by-group`) is its writer, from
`ascii/forms.txt` when it is there, else its form.

Split lists (one id per line; a line id `a01-000u-00` or a form id `a01-000u`, which selects every line
of that form) are looked up by name in `split_dir` (default: ROOT, ROOT/splits,
ROOT/largeWriterIndependentTextLineRecognitionTask):

    split   RWTH Aachen lists     IAM's own task lists
    train   train.uttlist         trainset.txt
    val     validation.uttlist    validationset1.txt
    val2    -                     validationset2.txt
    test    test.uttlist          testset.txt

`split` may also be a path to a list file. A split yields exactly the lines its list names, in list
order; `.missing` counts listed ids that are not in lines.txt or whose image file is absent.
"""

from __future__ import annotations

from pathlib import Path

from bridgeocr.data.sample import LineSample, LineSource
from bridgeocr.errors import DataError

SPLIT_FILES = {
    "train": ["train.uttlist", "trainset.txt"],
    "val": ["validation.uttlist", "validationset1.txt"],
    "validation": ["validation.uttlist", "validationset1.txt"],
    "val1": ["validationset1.txt"],
    "val2": ["validationset2.txt"],
    "test": ["test.uttlist", "testset.txt"],
}
SPLIT_DIRS = [".", "splits", "largeWriterIndependentTextLineRecognitionTask", "task"]


def form_of(line_id: str) -> str:
    return "-".join(line_id.split("-")[:2])


def image_path(root: Path, line_id: str) -> Path:
    form = form_of(line_id)
    return root / "lines" / form.split("-")[0] / form / f"{line_id}.png"


def read_lines_txt(path: Path, problems: list[str]) -> list[tuple[str, str, str, int]]:
    """(line id, ok|err, text, line number) for every line of `ascii/lines.txt`."""
    out = []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), f"cannot read ({exc.strerror})") from None
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            line = raw.rstrip(b"\r").decode("latin-1")  # IAM is ASCII; be lenient but say so
            problems.append(f"{path}:{lineno}: text is not valid UTF-8 (read as Latin-1)")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(" ")
        if len(parts) < 9 or parts[1] not in ("ok", "err"):
            problems.append(f"{path}:{lineno}: expected 'id ok|err graylevel n x y w h text|with|bars'")
            continue
        text = " ".join(parts[8:]).replace("|", " ")
        out.append((parts[0], parts[1], text, lineno))
    return out


def read_writers(root: Path) -> dict[str, str]:
    """form id -> writer id from `ascii/forms.txt` (`a01-000u 000 2 prt 7 5 52 36`: the second field);
    {} when the file is absent or unreadable (a line's group is then its form)."""
    try:
        text = (root / "ascii" / "forms.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    rows = (line.split() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {parts[0]: parts[1] for parts in rows if len(parts) >= 2}


def find_split_list(root: Path, split: str, split_dir=None) -> Path:
    as_path = Path(split).expanduser()
    if as_path.is_file():
        return as_path
    names = SPLIT_FILES.get(split.lower())
    if names is None:
        raise DataError(str(root), f"unknown IAM split {split!r}: use train, val, val2, test or a list file")
    dirs = [Path(split_dir)] if split_dir else [root / d for d in SPLIT_DIRS]
    if split_dir and not Path(split_dir).is_dir():
        raise DataError(str(split_dir), "IAM split directory not found")
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    raise DataError(str(dirs[0]), f"no split list for {split!r} (looked for {' or '.join(names)})")


def open_iam(root, split: str | None = None, *, split_dir=None, drop_err: bool = False) -> LineSource:
    root = Path(root)
    lines_txt = root / "ascii" / "lines.txt"
    if not lines_txt.is_file():
        raise DataError(str(lines_txt), "IAM lines.txt not found")
    problems: list[str] = []
    rows = read_lines_txt(lines_txt, problems)
    by_id = {r[0]: r for r in rows}
    by_form: dict[str, list[str]] = {}
    for r in rows:
        by_form.setdefault(form_of(r[0]), []).append(r[0])

    missing = 0
    if split is None:
        wanted = [(r[0], f"{lines_txt}:{r[3]}") for r in rows]
        list_path = None
    else:
        list_path = find_split_list(root, split, split_dir)
        wanted = []
        for lineno, raw in enumerate(list_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            item = raw.strip()
            if not item or item.startswith("#"):
                continue
            item = item.split()[0]
            if item in by_id:
                wanted.append((item, f"{list_path}:{lineno}"))
            elif item in by_form:
                wanted.extend((lid, f"{list_path}:{lineno}") for lid in by_form[item])
            else:
                missing += 1
                problems.append(f"{list_path}:{lineno}: {item} is not in {lines_txt}")

    samples: list[LineSample] = []
    seen: set[str] = set()
    dropped = 0
    writers = read_writers(root)
    for line_id, _listed_at in wanted:
        if line_id in seen:
            continue
        seen.add(line_id)
        _, status, text, lineno = by_id[line_id]
        if drop_err and status == "err":
            dropped += 1
            continue
        img = image_path(root, line_id)
        origin = f"{lines_txt}:{lineno}"
        if not img.is_file():
            missing += 1
            problems.append(f"{img} (from {origin}): image file not found")
            continue
        form = form_of(line_id)
        samples.append(LineSample(id=line_id, text=text, image_path=img, origin=origin,
                                  group=f"writer {writers[form]}" if form in writers else form))
    name = f"iam:{split}" if split else "iam"
    src = LineSource(samples, name, missing=missing, problems=problems, root=root, split=split)
    src.dropped_err = dropped
    src.split_list = list_path
    return src
