"""Tokenizers: one small interface over a character vocabulary and byte-level BPE.

Interface (both kinds): `pad_id, bos_id, eos_id, unk_id, vocab_size`, `encode(text) -> list[int]`
(no special tokens), `decode(ids) -> str` (special tokens dropped), `save(path)` (JSON), and
`unk_count` (how many characters/tokens `encode` mapped to UNK so far).

`load_tokenizer(path)` reads our JSON file, a directory holding our `tokenizer.json`, or a local
Hugging Face tokenizer directory (e.g. GPT-2: `vocab.json` + `merges.txt`, or `tokenizer.json`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from bridgeocr.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]  # ids 0..3 in our own vocabularies
FORMAT = "bridgeocr-tokenizer"


class CharTokenizer:
    """One token per character. Ids 0-3 are <pad>, <bos>, <eos>, <unk>; characters follow."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        chars = [c for c in chars if c not in SPECIALS]
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: duplicate characters in vocabulary")
        self.itos: list[str] = SPECIALS + list(chars)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.unk_count = 0

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> CharTokenizer:
        """Vocabulary = characters seen at least `min_count` times, most frequent first."""
        counts = Counter()
        for t in texts:
            counts.update(t)
        chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def special_ids(self) -> set[int]:
        return {self.pad_id, self.bos_id, self.eos_id, self.unk_id}

    def covers(self, text: str) -> bool:
        return all(c in self.stoi for c in text)

    def encode(self, text: str) -> list[int]:
        ids = [self.stoi.get(c, self.unk_id) for c in text]
        self.unk_count += sum(1 for i in ids if i == self.unk_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.bos_id, self.eos_id, self.unk_id) or not 0 <= i < len(self.itos):
                continue
            out.append(self.itos[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "kind": "char", "vocab": self.itos}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """Byte-level BPE (Hugging Face `tokenizers`), GPT-2 style: any string round-trips.

    Wraps a `tokenizers.Tokenizer`; our specials are looked up by name, with GPT-2's `<|endoftext|>`
    standing in for missing ones (as GPT-2 does: bos = eos = pad = unk = <|endoftext|>).
    """

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tk = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        fallback = vocab.get("<|endoftext|>")

        def find(*names):
            for n in names:
                if n in vocab:
                    return vocab[n]
            if fallback is None:
                raise DataError("tokenizer", f"no special token among {names}")
            return fallback

        self.pad_id = find(PAD, "<|pad|>", "[PAD]")
        self.bos_id = find(BOS, "<s>", "[BOS]")
        self.eos_id = find(EOS, "</s>", "[EOS]")
        self.unk_id = find(UNK, "[UNK]")
        self.unk_count = 0
        self._special = {self.pad_id, self.bos_id, self.eos_id, self.unk_id}
        for tok in tokenizer.get_added_tokens_decoder().values() if hasattr(
                tokenizer, "get_added_tokens_decoder") else []:
            if tok.special:
                self._special.add(vocab[tok.content])

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4000, min_frequency: int = 2) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=max(vocab_size, len(SPECIALS) + 256), min_frequency=min_frequency,
            special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False)
        tk.train_from_iterator(list(texts), trainer=trainer)
        return cls(tk)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> set[int]:
        return set(self._special)

    def covers(self, text: str) -> bool:  # byte level: every string
        return True

    def encode(self, text: str) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        self.unk_count += sum(1 for i in ids if i == self.unk_id and self.unk_id != self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        keep = [int(i) for i in ids if int(i) not in self._special and 0 <= int(i) < self.vocab_size]
        return self.tk.decode(keep, skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "kind": "bpe", "tokenizer": json.loads(self.tk.to_str())}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def tokenizer_from_dict(data: dict, where: str = "tokenizer"):
    kind = data.get("kind")
    if kind == "char":
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or vocab[: len(SPECIALS)] != SPECIALS:
            raise DataError(where, "char tokenizer: bad or missing 'vocab'")
        if not all(isinstance(c, str) for c in vocab):
            raise DataError(where, "char tokenizer: 'vocab' holds something other than strings")
        if len(set(vocab)) != len(vocab):
            dup = sorted({c for c in vocab if vocab.count(c) > 1})
            raise DataError(where, f"char tokenizer: duplicate entries in 'vocab' ({', '.join(map(repr, dup[:3]))})")
        return CharTokenizer(vocab[len(SPECIALS):])
    if kind == "bpe":
        from tokenizers import Tokenizer

        if not isinstance(data.get("tokenizer"), dict):
            raise DataError(where, "bpe tokenizer: bad or missing 'tokenizer'")
        try:
            tk = Tokenizer.from_str(json.dumps(data["tokenizer"]))
        except Exception as exc:
            raise DataError(where, f"bpe tokenizer: not a valid 'tokenizer' ({_first_line(exc)})") from None
        return BPETokenizer(tk)
    raise DataError(where, f"unknown tokenizer kind {kind!r}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def _load_hf_dir(path: Path):
    from tokenizers import Tokenizer

    tj = path / "tokenizer.json"
    if tj.is_file():
        try:
            tk = Tokenizer.from_file(str(tj))
        except Exception as exc:
            raise DataError(str(tj), f"not a tokenizer file ({_first_line(exc)})") from None
        return BPETokenizer(tk)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from tokenizers import decoders, models, pre_tokenizers

        try:
            model = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
        except Exception as exc:
            raise DataError(str(path / "vocab.json"), f"not a BPE vocabulary with merges.txt ({_first_line(exc)})") \
                from None
        tk = Tokenizer(model)
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        return BPETokenizer(tk)
    try:  # anything else transformers can read offline
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        return BPETokenizer(hf.backend_tokenizer)
    except Exception as exc:
        raise DataError(str(path), f"not a tokenizer directory ({type(exc).__name__})") from None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise DataError(str(path), "not valid JSON (not UTF-8 text)") from None


def _ours(data) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT


def load_tokenizer(path: str | Path):
    """Our JSON file, a directory with our `tokenizer.json`, or a local HF tokenizer directory."""
    path = Path(path)
    if path.is_dir():
        tj = path / "tokenizer.json"
        if tj.is_file() and _ours(data := _read_json(tj)):
            return tokenizer_from_dict(data, str(tj))
        return _load_hf_dir(path)
    if not path.is_file():
        raise DataError(str(path), "tokenizer file or directory not found")
    data = _read_json(path)
    if _ours(data):
        return tokenizer_from_dict(data, str(path))
    from tokenizers import Tokenizer  # a bare HF tokenizer.json

    try:
        return BPETokenizer(Tokenizer.from_file(str(path)))
    except Exception as exc:
        raise DataError(str(path), f"not a tokenizer file ({type(exc).__name__})") from None
