r"""Tokenizers: one small interface over a character vocabulary and byte-level BPE.

Interface (both kinds): `pad_id, bos_id, eos_id, unk_id, vocab_size`, `encode(text) -> list[int]`
(no special tokens), `decode(ids) -> str` (special tokens dropped), `save(path)`, `hf_tokenizer()` (the
`tokenizers.Tokenizer` that `save` writes) and `unk_count` (how many characters/tokens `encode` mapped to UNK
so far).

Files. `save(path)` writes a Hugging Face `tokenizers` file (what `tokenizers.Tokenizer.from_file` reads):
- char: a `WordLevel` model over single characters, a pre-tokenizer that isolates every character
  (`Split([\s\S], isolated)`: spaces, tabs and newlines are tokens like any other), the `Fuse` decoder (no
  spaces put between characters), unknown characters -> `<unk>`;
- bpe: the library's own byte-level BPE tokenizer;
- both: `<pad> <bos> <eos> <unk>` (GPT-2 style vocabularies: whatever stands for them) as special
  `added_tokens` with the ids they have in the vocabulary; no normalizer, no post-processor (nothing is added
  to an encoding, as in `encode`).
When the file is named `tokenizer.json`, `tokenizer_config.json` (class `PreTrainedTokenizerFast`, the special
tokens, `clean_up_tokenization_spaces: false`) and `special_tokens_map.json` are written beside it, so that
`transformers.AutoTokenizer.from_pretrained(dir)` encodes and decodes (`skip_special_tokens=True`) with the same
ids. One difference: the HF tokenizer reads the literal text `<unk>` (or another special token's text) as that
special token, while `CharTokenizer.encode` reads it as five characters.

`load_tokenizer(path)` reads these files, the files bridgeocr wrote before (`{"format": "bridgeocr-tokenizer",
"kind": "char" | "bpe", ...}`; the shipped models' are such), a directory holding either, or a local Hugging
Face tokenizer directory (e.g. GPT-2: `vocab.json` + `merges.txt`, or `tokenizer.json`). A `WordLevel`
tokenizer whose ids 0-3 are our special tokens and whose other tokens are single characters is a
`CharTokenizer`; any other tokenizer is wrapped as a `BPETokenizer`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from bridgeocr.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]  # ids 0..3 in our own vocabularies
FORMAT = "bridgeocr-tokenizer"  # the files written before the HF format (still read)
HF_FILE = "tokenizer.json"
HF_SIDECARS = ("tokenizer_config.json", "special_tokens_map.json")  # written beside an HF_FILE
CHAR_SPLIT = r"[\s\S]"  # the char tokenizer's pre-tokenizer pattern: every character on its own


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

    def hf_tokenizer(self):
        """The `tokenizers.Tokenizer` with the same ids: WordLevel over single characters (see the module)."""

        tk = Tokenizer(models.WordLevel(vocab=dict(self.stoi), unk_token=UNK))
        tk.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), behavior="isolated")
        tk.decoder = decoders.Fuse()
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
        return tk

    def special_tokens(self) -> dict[str, str]:
        return {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK}

    def to_dict(self) -> dict:
        """What `save` writes: the Hugging Face `tokenizers` JSON."""
        return json.loads(self.hf_tokenizer().to_str())

    def save(self, path: str | Path) -> None:
        """A `tokenizers` JSON file; named tokenizer.json, with the transformers files beside it."""
        _save_hf(Path(path), self.hf_tokenizer(), self.special_tokens(), "char")

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

    def special_tokens(self) -> dict[str, str]:
        tok = self.tk.id_to_token
        return {"pad_token": tok(self.pad_id), "bos_token": tok(self.bos_id), "eos_token": tok(self.eos_id),
                "unk_token": tok(self.unk_id)}

    def hf_tokenizer(self):
        """A copy of the wrapped `tokenizers.Tokenizer` in which the tokens standing for pad/bos/eos/unk are
        special added tokens (they already are in a tokenizer made by `train`; GPT-2's `<|endoftext|>` read
        from vocab.json + merges.txt becomes one, at its own id)."""

        tk = Tokenizer.from_str(self.tk.to_str())
        added = {t.content for t in tk.get_added_tokens_decoder().values() if t.special}
        missing = [t for t in dict.fromkeys(self.special_tokens().values()) if t not in added]
        if missing:
            tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        return tk

    def to_dict(self) -> dict:
        """What `save` writes: the Hugging Face `tokenizers` JSON."""
        return json.loads(self.hf_tokenizer().to_str())

    def save(self, path: str | Path) -> None:
        """A `tokenizers` JSON file; named tokenizer.json, with the transformers files beside it."""
        tk = self.hf_tokenizer()
        if tk.get_vocab_size(with_added_tokens=True) != self.vocab_size:  # never a file of another size
            raise DataError(str(path), "bpe tokenizer: a special token is not in the vocabulary")
        _save_hf(Path(path), tk, self.special_tokens(), "bpe")

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def tokenizer_from_dict(data: dict, where: str = "tokenizer"):
    """A tokenizer from a file's JSON: a `tokenizers` JSON (what `save` writes), or the files bridgeocr wrote
    before (`{"format": "bridgeocr-tokenizer", "kind": "char" | "bpe", ...}`)."""
    if not _ours(data) and isinstance(data, dict) and isinstance(data.get("model"), dict):
        return _from_hf_json(data, where)
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

        if not isinstance(data.get("tokenizer"), dict):
            raise DataError(where, "bpe tokenizer: bad or missing 'tokenizer'")
        try:
            tk = Tokenizer.from_str(json.dumps(data["tokenizer"]))
        except Exception as exc:
            raise DataError(where, f"bpe tokenizer: not a valid 'tokenizer' ({_first_line(exc)})") from None
        return BPETokenizer(tk)
    raise DataError(where, f"unknown tokenizer kind {kind!r}")


def from_hf_tokenizer(tk, where: str = "tokenizer"):
    """Our tokenizer for a `tokenizers.Tokenizer`: a `CharTokenizer` when it is one (WordLevel, ids 0-3 our
    special tokens, every other token one character, encoding character by character), else a `BPETokenizer`
    wrapping it (ids exactly the library's)."""
    if type(tk.model).__name__ == "WordLevel":
        vocab = tk.get_vocab(with_added_tokens=True)
        if all(vocab.get(t) == i for i, t in enumerate(SPECIALS)):
            itos = _char_itos(vocab, where)
            if itos is not None:
                char = CharTokenizer(itos[len(SPECIALS):])
                probe = "\x00".join(itos[len(SPECIALS):]) + "\x00"  # every character; \x00 keeps them apart
                if tk.encode(probe, add_special_tokens=False).ids == [char.stoi.get(c, char.unk_id) for c in probe]:
                    return char
    return BPETokenizer(tk)


def _char_itos(vocab: dict[str, int], where: str) -> list[str] | None:
    """id -> token of a WordLevel vocabulary; None when a token other than the specials is not one character."""
    by_id: dict[int, list[str]] = {}
    for token, i in vocab.items():
        by_id.setdefault(int(i), []).append(token)
    dup = sorted(t for ts in by_id.values() if len(ts) > 1 for t in ts)
    if dup:
        raise DataError(where, f"char tokenizer: duplicate entries in the vocabulary ({', '.join(map(repr, dup[:3]))})")
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(where, f"char tokenizer: ids are not 0..{len(by_id) - 1} (a gap in the vocabulary)")
    itos = [by_id[i][0] for i in range(len(by_id))]
    if any(len(t) != 1 for t in itos[len(SPECIALS):]):
        return None
    return itos


def _from_hf_json(data: dict, where: str):

    try:
        tk = Tokenizer.from_str(json.dumps(data))
    except Exception as exc:
        raise DataError(where, f"not a tokenizer file ({_first_line(exc)})") from None
    return from_hf_tokenizer(tk, where)


def _save_hf(path: Path, tk, specials: dict[str, str], kind: str) -> None:
    """`tk` as a `tokenizers` JSON at `path`; beside a `tokenizer.json`, transformers' two files too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tk.to_str(pretty=True) + "\n", encoding="utf-8")
    if path.name != HF_FILE:
        return
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
              "clean_up_tokenization_spaces": False,  # else decode() rewrites " ." -> "." etc.
              "add_bos_token": False, "add_eos_token": False,  # encode() adds nothing, as ours
              "model_input_names": ["input_ids", "attention_mask"], "bridgeocr_kind": kind}
    for name, data in zip(HF_SIDECARS, (config, specials)):
        (path.parent / name).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def _load_hf_dir(path: Path):

    tj = path / HF_FILE
    if tj.is_file():
        return _load_file(tj)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
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
        # lazy: transformers is slow to import and only Hugging Face paths need it
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        return from_hf_tokenizer(hf.backend_tokenizer, str(path))
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


def _load_file(path: Path):
    """A tokenizer file: a `tokenizers` JSON (ours since the HF format, or anyone's) or our old JSON."""
    data = _read_json(path)
    if _ours(data):
        return tokenizer_from_dict(data, str(path))
    if not isinstance(data, dict):
        raise DataError(str(path), f"not a tokenizer file (a JSON {type(data).__name__}, not an object)")
    return _from_hf_json(data, str(path))


def copy_tokenizer_files(src: str | Path, out: str | Path) -> None:
    """A derived model directory gets its source's tokenizer files byte for byte, and no others: the same
    vocabulary, in the same format (saving the loaded tokenizer would rewrite bridgeocr's own format as HF's)."""
    src, out = Path(src), Path(out)
    for name in (HF_FILE, *HF_SIDECARS):
        (out / name).unlink(missing_ok=True)
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)


def load_tokenizer(path: str | Path):
    """A tokenizer file (HF `tokenizers` JSON, or the old bridgeocr JSON), a directory holding a
    `tokenizer.json`, or a local HF tokenizer directory (vocab.json + merges.txt, or what transformers reads)."""
    path = Path(path)
    if path.is_dir():
        return _load_hf_dir(path)
    if not path.is_file():
        raise DataError(str(path), "tokenizer file or directory not found")
    return _load_file(path)
