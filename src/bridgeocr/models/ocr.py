"""OCRModel: encoder -> connector -> GPT (+ an optional CTC head on the encoder).

A model directory (`save_pretrained`) holds `config.json` (the ModelConfig as a dict, vocab size, image
height, special ids, the encoder's structure, format version), `model.safetensors` and, when a tokenizer is
attached, `tokenizer.json`. `from_pretrained` rebuilds the structure from config.json alone (the pretrained
part directories named in the config need not exist any more) and loads the weights exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_model

from bridgeocr.config import ImageConfig, ModelConfig, config_from_dict
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.models.connectors import build_connector
from bridgeocr.models.ctc import CTCHead, ctc_read
from bridgeocr.models.decoder import GPT, apply_freeze
from bridgeocr.models.decoding import Hypothesis, generate
from bridgeocr.models.encoder import (
    LineEncoder,
    check_image_height,
    encoder_from_meta,
    encoder_meta,
    load_encoder,
)
from bridgeocr.models.model_dir import (
    check_tokenizer_matches,
    config_value,
    load_state_checked,
    read_config_json,
    safetensors_shapes,
)
from bridgeocr.models.ppocr import import_ppocr
from bridgeocr.models.widening import reading_tokens
from bridgeocr.shipped import resolve_pretrained

OCR_FORMAT = "bridgeocr-ocr"
OCR_FORMAT_VERSION = 1
DEFAULT_SPECIAL_IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2}  # CharTokenizer's, used without a tokenizer
DECODINGS = ("gpt", "ctc", "joint")
# the speed preset (`--fast`): greedy joint decoding, which checks the CTC head's reading with the GPT in one
# parallel pass (models/joint_decoding.joint_greedy); its speed and CER cost are in docs/benchmarks.md
FAST = "fast"
# joint decoding with the beam search on every line, also those the checked draft reads whole (what joint
# decoding did before `model.joint_draft`): slower at the same CER, docs/benchmarks.md "Draft first"
FULL = "full"
PRESETS = (FAST, FULL)

__all__ = ["OCRModel", "OCROutput", "Hypothesis"]


@dataclass
class EncodedLines:
    """A batch of lines as the decoder strategies read them (OCRModel.encode_lines)."""

    visual: torch.Tensor  # [B, M, d_model] the connector's output, the GPT's prefix
    visual_mask: torch.Tensor  # [B, M] True = real
    ctc_log_probs: torch.Tensor | None = None  # [B, T, V] the CTC head's frame log-posteriors (joint decoding)
    ctc_lengths: torch.Tensor | None = None  # [B] real frames per line


@dataclass
class OCROutput:
    logits: torch.Tensor  # [B, T, V]; logits[:, t] predicts input_ids[:, t+1]
    visual: torch.Tensor  # [B, M, d_model] connector output
    visual_mask: torch.Tensor  # [B, M]
    enc_tokens: torch.Tensor  # [B, N, d_enc]
    enc_mask: torch.Tensor  # [B, N]
    ctc_logits: torch.Tensor | None = None  # [B, N * upsample, V] (blank = 0) when the model has a CTC head
    ctc_mask: torch.Tensor | None = None  # [B, N * upsample] real CTC frames

    @property
    def visual_tokens(self) -> torch.Tensor:
        return self.visual


def _build_encoder(cfg: ModelConfig, vocab_size: int, image_height: int, tokenizer, ctc_head):
    """The encoder `cfg` names -> (encoder, CTC head): a pretrained one with its own settings written into
    `cfg.encoder` (and its CTC head, when the model has one and none was given), PP-OCR's recogniser, or a
    new LineEncoder."""
    if cfg.encoder.pretrained:
        encoder, head = load_encoder(cfg.encoder.pretrained, image_height)
        cfg.encoder = replace(encoder.cfg, pretrained=cfg.encoder.pretrained, freeze=cfg.encoder.freeze)
        if cfg.ctc_head and ctc_head is None and head is not None:
            if head.vocab_size != vocab_size:
                raise ConfigError(f"{cfg.encoder.pretrained}: CTC head has {head.vocab_size} classes, "
                                  f"the tokenizer {vocab_size} (pretrain the encoder with this tokenizer)")
            ctc_head = head
        return encoder, ctc_head
    if cfg.encoder.kind == "ppocr":  # PP-OCR's recogniser, its classifier mapped onto the tokenizer
        encoder, head, _ = import_ppocr(cfg.encoder.onnx, tokenizer, cfg.encoder)
        check_image_height(encoder, image_height, "model.encoder.kind=ppocr")
        if cfg.ctc_head and ctc_head is None:
            ctc_head = head
        return encoder, ctc_head
    return LineEncoder(cfg.encoder, image_height), ctc_head


def _build_decoder(cfg: ModelConfig, vocab_size: int) -> GPT:
    """The GPT `cfg` names: a pretrained LM (its first n_layer blocks; its shape written into `cfg.decoder`,
    and its prefix positions unless the config says) or a new one."""
    if not cfg.decoder.pretrained:
        return GPT(cfg.decoder, vocab_size)
    decoder = GPT.from_hf(resolve_pretrained(cfg.decoder.pretrained), n_layer=cfg.decoder.n_layer,
                          dropout=cfg.decoder.dropout)
    d = decoder.cfg
    cfg.decoder = replace(cfg.decoder, n_layer=d.n_layer, n_embd=d.n_embd, n_head=d.n_head, n_positions=d.n_positions)
    if cfg.decoder.prefix_positions is None:  # as the LM learnt to read a prefix
        cfg.decoder.prefix_positions = d.prefix_positions
    decoder.cfg = replace(d, prefix_positions=cfg.decoder.prefix_positions)
    return decoder


class OCRModel(nn.Module):
    """Reads a batch of line images into text. Parts are built from `cfg` (loading `pretrained` dirs) unless
    given ready-made (`encoder=`, `decoder=`, `ctc_head=`: how `from_pretrained` rebuilds a saved model)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, image_height: int = 32, tokenizer=None, *,
                 encoder: nn.Module | None = None, decoder: GPT | None = None, ctc_head: CTCHead | None = None):
        super().__init__()
        cfg = copy.deepcopy(cfg)  # the parts' own settings are written into it (what config.json records)
        if encoder is None:
            encoder, ctc_head = _build_encoder(cfg, vocab_size, image_height, tokenizer, ctc_head)
        if decoder is None:
            decoder = _build_decoder(cfg, vocab_size)
        if decoder.vocab_size < vocab_size:
            raise ConfigError(f"decoder vocabulary ({decoder.vocab_size}) is smaller than the tokenizer's "
                              f"({vocab_size}): use the tokenizer the decoder was trained with")
        if not 0 <= cfg.attach_layer < decoder.cfg.n_layer:
            raise ConfigError(f"model.attach_layer: {cfg.attach_layer} not in [0, {decoder.cfg.n_layer - 1}]")
        if cfg.ctc_head and ctc_head is None:
            ctc_head = CTCHead(encoder.d_out, vocab_size, cfg.ctc_upsample)
        if ctc_head is not None:
            cfg.ctc_upsample = ctc_head.upsample
        self.cfg, self.image_height, self.vocab_size = cfg, image_height, decoder.vocab_size
        self.encoder = encoder
        self.connector = build_connector(cfg.connector, encoder.d_out, decoder.cfg.n_embd)
        self.decoder = decoder
        self.ctc_head = ctc_head if cfg.ctc_head else None
        self._bind_connector()
        self.tokenizer = tokenizer
        self.image_config: ImageConfig | None = None  # the preprocessing it reads with (config.json "image")
        ids = {k: getattr(tokenizer, k) for k in DEFAULT_SPECIAL_IDS} if tokenizer is not None else DEFAULT_SPECIAL_IDS
        self.pad_id, self.bos_id, self.eos_id = ids["pad_id"], ids["bos_id"], ids["eos_id"]
        self.encoder.requires_grad_(not cfg.encoder.freeze)
        apply_freeze(self.decoder, cfg.decoder.freeze)

    def _bind_connector(self) -> None:
        """Hand the connector the parts of the model it names in `needs` (e.g. ctc_embed / ctc_collapse: the
        CTC head and the GPT's embeddings); a need the model cannot meet is a ConfigError naming the kind."""
        needs, kind = self.connector.needs, self.cfg.connector.kind
        if not needs:
            return
        parts = {"ctc_head": self.ctc_head, "wte": self.decoder.wte}  # what a connector may be built from
        unknown = [name for name in needs if name not in parts]
        if unknown:
            raise ConfigError(f"connector {kind} needs {', '.join(unknown)}, which the model does "
                              f"not have (it offers {', '.join(parts)})")
        if "ctc_head" in needs and self.ctc_head is None:
            raise ConfigError(f"connector {kind} reads the encoder's CTC head: set "
                              "model.ctc_head=true (the shipped encoder has one)")
        self.connector.bind(**{name: parts[name] for name in needs})

    # ------------------------------------------------------------------------------------- forward

    def train(self, mode: bool = True) -> OCRModel:
        """A frozen encoder stays in eval mode (no dropout): its tokens are the same in every step, which is
        also what lets them be cached (data/features.py)."""
        super().train(mode)
        if self.cfg.encoder.freeze:
            self.encoder.eval()
        return self

    def encoder_tokens(self, images: torch.Tensor, image_mask: torch.Tensor):
        """-> (tokens [B, N, d_enc], mask [B, N]). A batch of cached tokens (3-D `images`, from
        data/features.py) is already the encoder's output and passes through."""
        if images.dim() == 3:
            return images, image_mask.to(torch.bool)
        return self.encoder(images, image_mask)

    @property
    def widens(self) -> bool:
        """Whether a reading may encode a line twice (`cfg.widen_crowded` with a CTC head to measure it)."""
        return self.cfg.widen_crowded > 0 and self.ctc_head is not None

    def reading_tokens(self, images: torch.Tensor, image_mask: torch.Tensor):
        """`encoder_tokens` as a reading sees them: crowded lines encoded again wider (`cfg.widen_crowded`,
        models/widening.py). Training (`forward`) reads each line once, as it is."""
        return reading_tokens(self.encoder_tokens, self.encoder, self.ctc_head, images, image_mask,
                              self.cfg.widen_crowded)

    def encode(self, images: torch.Tensor, image_mask: torch.Tensor):
        """-> (visual [B, M, d_model], visual_mask [B, M]): the connector's output."""
        lines = self.encode_lines(images, image_mask)
        return lines.visual, lines.visual_mask

    def encode_lines(self, images: torch.Tensor, image_mask: torch.Tensor, with_ctc: bool = False) -> EncodedLines:
        """What a search reads: the visual prefix, and with `with_ctc` the CTC head's frame log-posteriors."""
        enc, enc_mask = self.reading_tokens(images, image_mask)
        visual, vmask = self.connector(enc, enc_mask)
        if not with_ctc or self.ctc_head is None:
            return EncodedLines(visual, vmask)
        return EncodedLines(visual, vmask, self.ctc_head(enc).float().log_softmax(-1),
                            self.ctc_head.frame_mask(enc_mask).sum(1))

    def forward(self, batch) -> OCROutput:
        enc, enc_mask = self.encoder_tokens(batch.images, batch.image_mask)
        visual, vmask = self.connector(enc, enc_mask)
        logits, _ = self.decoder(batch.input_ids, batch.attention_mask, prefix=visual, prefix_mask=vmask,
                                 attach_layer=self.cfg.attach_layer)
        ctc = ctc_mask = None
        if self.ctc_head is not None:
            ctc, ctc_mask = self.ctc_head(enc), self.ctc_head.frame_mask(enc_mask)
        return OCROutput(logits, visual, vmask, enc, enc_mask, ctc, ctc_mask)

    def text_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder reading text alone (the LM / KD reference path), same text positions as with an image."""
        return self.decoder(input_ids, attention_mask)[0]

    def generate(self, images, image_mask, beam: int = 1, max_new_tokens: int | None = None,
                 length_penalty: float = 1.0, ctc_weight: float = 0.0, draft: bool | None = None) -> list[Hypothesis]:
        """The GPT's reading (ctc_weight > 0: joint CTC / GPT beam search with the CTC head; `draft`: draft
        first, None = `cfg.joint_draft`)."""
        return generate(self, images, image_mask, beam=beam, max_new_tokens=max_new_tokens,
                        length_penalty=length_penalty, ctc_weight=ctc_weight, draft=draft)

    def ctc_decode(self, images, image_mask) -> list[Hypothesis]:
        """Greedy CTC with the encoder's head: fast, no language model."""
        if self.ctc_head is None:
            raise BridgeOCRError("this model has no CTC head (train with model.ctc_head=true)")
        return ctc_read(self.reading_tokens, self.ctc_head, images, image_mask, self.tokenizer)

    def decoding_for(self, decoding: str | None = None) -> str:
        """The decoding a read uses: the one asked for, else `cfg.decoding` (gpt when it needs a missing head).
        The presets `fast` (joint decoding at beam 1) and `full` (joint beam search on every line) are joint
        decoding, or the GPT's without a head."""
        if decoding in PRESETS:
            return "joint" if self.ctc_head is not None else "gpt"
        if decoding is None:
            decoding = self.cfg.decoding
            if decoding in ("ctc", "joint") and self.ctc_head is None:
                decoding = "gpt"
        if decoding not in DECODINGS:
            raise ConfigError(f"decoding: expected one of {', '.join(DECODINGS + PRESETS)}, got {decoding!r}")
        return decoding

    def beam_for(self, decoding: str | None, beam: int | None = None) -> int:
        """The beam a read uses: 1 for `fast`, else the one asked for, else `cfg.joint_beam` (joint) or 1 (gpt)."""
        if decoding == FAST:
            return 1
        return beam or (self.cfg.joint_beam if self.decoding_for(decoding) == "joint" else 1)

    def drafts_first(self, decoding: str | None = None) -> bool:
        """Whether joint decoding at beam > 1 searches only the lines whose checked draft does not hold
        (`cfg.joint_draft`; the `full` preset searches every line)."""
        return self.cfg.joint_draft and decoding != FULL

    def read(self, images, image_mask, beam: int | None = None, decoding: str | None = None) -> list[Hypothesis]:
        """Transcribe a batch: `decoding` gpt | ctc | joint | fast | full, None = the model's `cfg.decoding`;
        `beam` None = `beam_for`'s default."""
        how, beam = self.decoding_for(decoding), self.beam_for(decoding, beam)
        if how == "ctc":
            return self.ctc_decode(images, image_mask)
        if how == "joint":
            return self.generate(images, image_mask, beam=beam, ctc_weight=self.cfg.joint_ctc_weight,
                                 draft=self.drafts_first(decoding))
        return self.generate(images, image_mask, beam=beam)

    # ------------------------------------------------------------------------------------ save/load

    def save_pretrained(self, path, image: ImageConfig | dict | None = None) -> None:
        """config.json (what the model is and, with `image` or `self.image_config`, how its lines are
        preprocessed), model.safetensors and tokenizer.json: a directory that describes itself."""

        path = Path(path)
        image = self.image_config if image is None else image
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format": OCR_FORMAT, "version": OCR_FORMAT_VERSION, "model": asdict(self.cfg),
                "vocab_size": self.vocab_size, "image_height": self.image_height,
                "special_ids": {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id},
                "encoder": encoder_meta(self.encoder),
                "decoder": {"layer_norm_epsilon": self.decoder.layer_norm_epsilon}}
        if image is not None:
            meta["image"] = asdict(image) if isinstance(image, ImageConfig) else dict(image)
        if self.tokenizer is not None:  # what a loader checks tokenizer.json against
            meta["tokenizer_vocab_size"] = int(self.tokenizer.vocab_size)
        if self.ctc_head is not None:
            meta["ctc_vocab_size"] = int(self.ctc_head.vocab_size)
        save_model(self, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(meta, indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save(path / "tokenizer.json")

    @classmethod
    def from_pretrained(cls, path, tokenizer=None, map_location: str | torch.device = "cpu") -> OCRModel:
        """Restore a `save_pretrained` directory exactly (tokenizer.json is loaded when present and no
        `tokenizer` is given). What does not match is refused with one BridgeOCRError naming the file: a
        broken config.json, a truncated or corrupt model.safetensors, missing / extra / wrong-shape tensors, a
        tokenizer that does not fit the model's vocabulary (see models/model_dir.py)."""

        path = resolve_pretrained(path)
        cfg_file = path / "config.json"
        meta, cfg = _read_model_config(path, cfg_file)
        vocab = config_value(meta, "vocab_size", cfg_file, int)
        image_height = config_value(meta, "image_height", cfg_file, int)
        weights = path / "model.safetensors"
        shapes = safetensors_shapes(weights)  # a truncated / garbage file is refused before anything is built
        encoder, decoder, ctc = _build_parts(meta, cfg, vocab, shapes, cfg_file)
        tok_where = "the tokenizer passed in"
        if tokenizer is None and (path / "tokenizer.json").is_file():
            tok_where = path / "tokenizer.json"
            tokenizer = load_tokenizer(tok_where)
        if tokenizer is not None:
            check_model_tokenizer(tokenizer, vocab, meta, cfg, ctc, tok_where, cfg_file)
        with _describes(cfg_file):
            model = cls(cfg, vocab, image_height, tokenizer, encoder=encoder, decoder=decoder, ctc_head=ctc)
        if tokenizer is None:
            model.pad_id, model.bos_id, model.eos_id = _special_ids(meta, cfg_file)
        load_state_checked(weights, model, device=map_location)
        model.image_config = image_config_from(meta.get("image"))
        return model


@contextlib.contextmanager
def _describes(cfg_file):
    """Building what config.json describes: any failure is one ConfigError naming the file."""
    try:
        yield
    except BridgeOCRError as exc:
        raise ConfigError(f"{cfg_file}: {exc}") from None
    except Exception as exc:  # a key of the right type with a value no model is built from
        raise ConfigError(f"{cfg_file}: cannot build the model it describes "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _read_model_config(path, cfg_file) -> tuple[dict, ModelConfig]:
    """config.json -> (its dict, the ModelConfig it holds), refusing another format or a newer version."""
    if not cfg_file.is_file():
        raise ConfigError(f"{path}: not a model directory (no config.json)")
    meta = read_config_json(cfg_file)
    if meta.get("format") != OCR_FORMAT:
        raise ConfigError(f"{cfg_file}: not a bridgeocr OCR model directory (format {meta.get('format')!r})")
    version = meta.get("version", 0)
    if not isinstance(version, int):
        raise ConfigError(f"{cfg_file}: key 'version' should be an integer, got {version!r}")
    if version > OCR_FORMAT_VERSION:
        raise ConfigError(f"{path}: format version {version} is newer than this bridgeocr reads")
    try:
        cfg = config_from_dict(config_value(meta, "model", cfg_file, dict), ModelConfig)
    except ConfigError as exc:
        raise ConfigError(f"{cfg_file}: key 'model': {str(exc).removeprefix('config: ')}") from None
    return meta, cfg


def _build_parts(meta: dict, cfg: ModelConfig, vocab: int, shapes: dict, cfg_file):
    """The encoder, GPT and CTC head a config.json describes (random weights, to be loaded)."""
    enc_meta = config_value(meta, "encoder", cfg_file, dict)
    dec_meta = meta.get("decoder", {})
    eps = dec_meta.get("layer_norm_epsilon", 1e-5) if isinstance(dec_meta, dict) else 1e-5
    with _describes(cfg_file):
        encoder = encoder_from_meta(enc_meta)
        decoder = GPT(replace(cfg.decoder, pretrained=None), vocab, layer_norm_epsilon=eps)
    if not cfg.ctc_head:
        return encoder, decoder, None
    ctc_vocab = meta.get("ctc_vocab_size")
    if not isinstance(ctc_vocab, int) or isinstance(ctc_vocab, bool) or ctc_vocab <= 0:
        # written before config.json recorded it: the head's rows in the file, else the vocabulary
        rows = shapes.get("ctc_head.proj.weight", (0,))[0]
        ctc_vocab = rows // cfg.ctc_upsample if rows and rows % cfg.ctc_upsample == 0 else vocab
    return encoder, decoder, CTCHead(encoder.d_out, ctc_vocab, cfg.ctc_upsample)


def _special_ids(meta: dict, cfg_file) -> tuple[int, int, int]:
    """(pad, bos, eos) from config.json, for a model loaded without a tokenizer."""
    ids = meta.get("special_ids", DEFAULT_SPECIAL_IDS)
    if not isinstance(ids, dict) or any(not isinstance(ids.get(k), int) for k in DEFAULT_SPECIAL_IDS):
        raise ConfigError(f"{cfg_file}: key 'special_ids' should hold integers {', '.join(DEFAULT_SPECIAL_IDS)}")
    return ids["pad_id"], ids["bos_id"], ids["eos_id"]


def check_model_tokenizer(tokenizer, vocab: int, meta: dict, cfg: ModelConfig, ctc: CTCHead | None, where,
                          cfg_file) -> None:
    """A saved model's tokenizer must fit it: never more tokens than the decoder's vocabulary; exactly the
    size config.json records (`tokenizer_vocab_size`), exactly the CTC head's classes; and, in directories
    saved before the size was recorded, exactly the vocabulary when the decoder was not a pretrained LM (only a
    pretrained LM's embedding table may be larger than the tokenizer: padded)."""

    recorded = meta.get("tokenizer_vocab_size")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        check_tokenizer_matches(tokenizer, vocab, where, exact=recorded,
                                exact_what="the model's vocabulary is {n}" if recorded == vocab else
                                f"the model was trained with a tokenizer of {{n}} ({cfg_file.name}: "
                                "tokenizer_vocab_size)")
    elif not cfg.decoder.pretrained:
        check_tokenizer_matches(tokenizer, vocab, where, exact=vocab,
                                exact_what="the model's vocabulary is {n}")
    check_tokenizer_matches(tokenizer, vocab, where)
    if ctc is not None:
        check_tokenizer_matches(tokenizer, vocab, where, exact=ctc.vocab_size,
                                exact_what="the model's CTC head has {n} classes")


def image_config_from(image) -> ImageConfig | None:
    """A config.json / training.json "image" entry -> ImageConfig (keys it does not know are left out)."""
    if not isinstance(image, dict):
        return None
    return ImageConfig(**{k: v for k, v in image.items() if k in ImageConfig.__dataclass_fields__})
