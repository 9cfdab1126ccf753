"""Text for synthetic lines and LM pretraining.

`read_corpus(files)` -> documents (files split at `<|endoftext|>`); with no files, the built-in English
corpus shipped in the package (`bridgeocr/resources/corpus_en.txt`), so the demo works after a bare
`pip install`. `cut_lines(documents, rng)` cuts realistic text lines at word boundaries.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from bridgeocr.errors import DataError

DOC_SEP = "<|endoftext|>"
_WS = re.compile(r"\s+")
_ILLUSTRATION = re.compile(r"\[Illustration[^\]]*\]")


# Standard-library modules whose docstrings are English prose. Python ships them on every machine, so the
# built-in corpus is large (~10^5 words) without a download: a few KB of shipped text alone is so small
# that an OCR decoder memorises it instead of learning to read.
DOC_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "codecs", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "email.message", "enum", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "http.cookiejar", "http.server",
    "imaplib", "importlib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging",
    "logging.handlers", "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "optparse",
    "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "random", "re",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
)


def _prose(paragraph: str) -> bool:
    """Sentences rather than code, tables or examples."""
    text = " ".join(paragraph.split())
    if len(text) < 60 or ">>>" in text or "::" in text:
        return False
    return sum(c.isalpha() or c in " ,.;'" for c in text) / len(text) > 0.9


def module_doc_paragraphs(name: str) -> list[str]:
    """Prose paragraphs of one module's docstrings (the module's and its own public objects', sorted)."""

    try:
        module = importlib.import_module(name)
    except ImportError:  # a Python built without it (e.g. no sqlite3): the corpus is a little smaller
        return []
    out = []
    for attr in [None] + sorted(a for a in dir(module) if not a.startswith("_")):
        obj = module if attr is None else getattr(module, attr, None)
        if obj is module or getattr(obj, "__module__", None) == name:
            out.extend(p for p in re.split(r"\n\s*\n", inspect.getdoc(obj) or "") if _prose(p))
    return out


def stdlib_doc_text() -> str:
    """Prose paragraphs from the docstrings of DOC_MODULES, each paragraph once."""

    with warnings.catch_warnings():  # touching deprecated attributes (typing.io, ...) warns; we only read docs
        warnings.simplefilter("ignore")
        paragraphs_out = [p for name in DOC_MODULES for p in module_doc_paragraphs(name)]
    return "\n\n".join(dict.fromkeys(paragraphs_out))


def builtin_corpus_text() -> str:
    """The shipped English text, then the standard library's documentation prose (one more document)."""
    shipped = resources.files("bridgeocr").joinpath("resources/corpus_en.txt").read_text(encoding="utf-8")
    return f"{shipped}\n{DOC_SEP}\n{stdlib_doc_text()}"


def read_corpus(files: Iterable[str | Path] | None = None) -> list[str]:
    """Non-empty documents from text files (UTF-8; split at `<|endoftext|>`), or the built-in corpus."""
    if not files:
        texts = [("built-in corpus", builtin_corpus_text())]
    else:
        texts = []
        for f in files:
            path = Path(f)
            if not path.is_file():
                raise DataError(str(path), "corpus file not found")
            data = path.read_bytes()
            try:
                texts.append((str(path), data.decode("utf-8")))
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                raise DataError(f"{path}:{line}", "text is not valid UTF-8") from None
    docs = [d.strip() for _, text in texts for d in text.split(DOC_SEP)]
    return [d for d in docs if d]


def paragraphs(document: str) -> list[str]:
    """Paragraphs (blank-line separated), whitespace collapsed, Gutenberg illustration tags removed."""
    out = []
    for para in re.split(r"\n\s*\n", document):
        para = _WS.sub(" ", _ILLUSTRATION.sub(" ", para)).strip()
        if para:
            out.append(para)
    return out


def cut_lines(documents: Sequence[str], rng: random.Random, min_chars: int = 15, max_chars: int = 80,
              max_lines: int | None = None) -> list[str]:
    """Cut documents into lines of min_chars..max_chars characters at word boundaries.

    Each line gets a random target length; words are added while they fit. Lines shorter than
    `min_chars` (paragraph tails) are dropped; a single word longer than `max_chars` is skipped.
    The result is deterministic for a given rng state; `max_lines` stops early.
    """
    lines: list[str] = []
    for doc in documents:
        for para in paragraphs(doc):
            words = para.split(" ")
            i = 0
            while i < len(words):
                target = rng.randint(min_chars, max_chars)
                cur: list[str] = []
                length = 0
                while i < len(words):
                    w = words[i]
                    add = len(w) + (1 if cur else 0)
                    if len(w) > max_chars:
                        i += 1
                        break
                    if cur and length + add > target:
                        break
                    if length + add > max_chars:
                        break
                    cur.append(w)
                    length += add
                    i += 1
                if length >= min_chars:
                    lines.append(" ".join(cur))
                    if max_lines is not None and len(lines) >= max_lines:
                        return lines
    return lines
