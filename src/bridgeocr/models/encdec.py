"""A TrOCR-style baseline: a transformers `VisionEncoderDecoderModel` = our `LineEncoder` (wrapped as a
`PreTrainedModel`) + a `GPT2LMHeadModel` with cross-attention, built, trained and evaluated like one of
our runs (trained by train/encdec.py, read by eval/evaluate.evaluate_baseline; `benchmarks/trocr_baseline.py` is
the command line; experiments/bench.py builds it for its speed rows).

Padding: the stock `VisionEncoderDecoderModel.forward` passes `encoder_attention_mask=None` to the decoder,
so its cross-attention would read the padded encoder tokens of a padded batch. `LineVisionEncoderDecoder`
(a subclass) returns the encoder's token mask with its output (`LineEncoderOutput.token_mask`, computed from
`image_mask`) and hands it to the decoder as `encoder_attention_mask` on every call, `generate` included.
Without `image_mask` every column counts as real (the benchmark's full-width images).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from bridgeocr.config import EncoderConfig, ImageConfig, ModelConfig
from bridgeocr.data.tokenizers import load_tokenizer
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.models.encoder import LineEncoder

CARD = "baseline_card.json"
CROSS_KEYS = ("crossattention.", "ln_cross_attn.", "enc_to_dec_proj.")

__all__ = ["build_baseline", "load_baseline", "decode_batch", "CARD", "CROSS_KEYS"]


# ------------------------------------------------------------------------------------------ the model


@functools.cache
def _ved_classes():
    """(LineEncoderHFConfig, LineEncoderHF, LineEncoderOutput, LineVisionEncoderDecoder), registered once
    with AutoConfig/AutoModel so `from_pretrained` rebuilds the encoder from its config. Built on the
    first call: transformers (slow to import) is imported only when the baseline is used, which is why every
    transformers import of this module sits in a function."""
    from transformers import AutoConfig, AutoModel

    config_cls = _encoder_config_class()
    output_cls = _encoder_output_class()
    encoder_cls = _encoder_class(config_cls, output_cls)
    ved_cls = _masked_ved_class()
    try:
        AutoConfig.register(config_cls.model_type, config_cls)
        AutoModel.register(config_cls, encoder_cls)
    except ValueError:  # registered by an earlier import of this module under another name
        pass
    return config_cls, encoder_cls, output_cls, ved_cls


def _encoder_config_class():
    """LineEncoderHFConfig: the LineEncoder's config (a dict of `EncoderConfig`) and image height, as a
    transformers config."""
    from transformers import PretrainedConfig

    class LineEncoderHFConfig(PretrainedConfig):
        model_type = "bridgeocr_line_encoder"

        def __init__(self, encoder=None, image_height=32, hidden_size=192, **kwargs):
            super().__init__(**kwargs)
            self.encoder, self.image_height, self.hidden_size = encoder or {}, image_height, hidden_size

    return LineEncoderHFConfig


def _encoder_output_class():
    """LineEncoderOutput: the encoder's tokens with their mask (what the decoder's cross-attention may
    read)."""
    from transformers.modeling_outputs import BaseModelOutput

    @dataclass
    class LineEncoderOutput(BaseModelOutput):
        token_mask: torch.Tensor | None = None  # [B, N] True on real tokens

    return LineEncoderOutput


def _encoder_class(config_cls, output_cls):
    """LineEncoderHF: our LineEncoder as a transformers `PreTrainedModel` (its own initialisation kept)."""
    from transformers import PreTrainedModel

    class LineEncoderHF(PreTrainedModel):
        config_class = config_cls
        main_input_name = "pixel_values"

        def __init__(self, config):
            super().__init__(config)
            self.line = LineEncoder(EncoderConfig(**config.encoder), config.image_height)
            self.post_init()

        def _init_weights(self, module):  # keep LineEncoder's own initialisation
            pass

        def forward(self, pixel_values, image_mask=None, output_attentions=None, output_hidden_states=None,
                    return_dict=None, **kw):
            if image_mask is None:  # full-width images: every column is real
                image_mask = torch.ones(pixel_values.shape[0], pixel_values.shape[-1], dtype=torch.bool,
                                        device=pixel_values.device)
            tokens, mask = self.line(pixel_values, image_mask)
            return output_cls(last_hidden_state=tokens, token_mask=mask)

        def get_output_embeddings(self):
            return None

    return LineEncoderHF


def _masked_ved_class():
    """LineVisionEncoderDecoder: the stock model, but its decoder is handed the encoder's token mask."""
    from transformers import VisionEncoderDecoderModel as _VED

    class LineVisionEncoderDecoder(_VED):
        """VisionEncoderDecoderModel whose decoder cross-attends to real encoder tokens only."""

        def forward(self, pixel_values=None, *args, image_mask=None, encoder_outputs=None, **kwargs):
            if encoder_outputs is None and pixel_values is not None:
                encoder_outputs = self.encoder(pixel_values=pixel_values, image_mask=image_mask)
            mask = getattr(encoder_outputs, "token_mask", None)
            if mask is None:
                return super().forward(pixel_values, *args, encoder_outputs=encoder_outputs, **kwargs)

            def inject(module, a, kw):  # the stock forward passes encoder_attention_mask=None
                kw["encoder_attention_mask"] = mask.to(torch.long)
                return a, kw

            handle = self.decoder.register_forward_pre_hook(inject, with_kwargs=True)
            try:
                return super().forward(pixel_values, *args, encoder_outputs=encoder_outputs, **kwargs)
            finally:
                handle.remove()

    return LineVisionEncoderDecoder


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging  # lazy, as everything of transformers here

    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars


def _assemble(enc, dec, bos_id: int, eos_id: int, pad_id: int):
    _, _, _, ved = _ved_classes()
    model = ved(encoder=enc, decoder=dec)
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.bos_token_id, c.eos_token_id, c.pad_token_id = bos_id, bos_id, eos_id, pad_id
    return model


def build_baseline(cfg: ModelConfig, vocab_size: int, height: int, *, bos_id: int = 1, eos_id: int = 2,
                   pad_id: int = 0, encoder=None, decoder_dir: str | Path | None = None):
    """TrOCR-style model: our LineEncoder (`cfg.encoder`, or the given LineEncoder's weights) + a GPT-2 with
    cross-attention of `cfg.decoder`'s width, depth, heads and `vocab_size` (random), or the first
    `cfg.decoder.n_layer` blocks of the HF GPT-2 dir `decoder_dir` (cross-attention random)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet_transformers()
    cfg_cls, enc_cls, _, _ = _ved_classes()
    if encoder is not None and not isinstance(encoder, LineEncoder):
        raise ConfigError(f"the encoder-decoder baseline wraps our LineEncoder only, not {type(encoder).__name__}")
    enc_cfg = replace(encoder.cfg if encoder is not None else cfg.encoder, pretrained=None, freeze=False)
    enc = enc_cls(cfg_cls(encoder=asdict(enc_cfg), image_height=height, hidden_size=enc_cfg.dim))
    if encoder is not None:
        enc.line.load_state_dict(encoder.state_dict(), strict=True)
    d = cfg.decoder
    common = dict(add_cross_attention=True, is_decoder=True, bos_token_id=bos_id, eos_token_id=eos_id,
                  pad_token_id=pad_id, resid_pdrop=d.dropout, embd_pdrop=d.dropout, attn_pdrop=d.dropout)
    if decoder_dir is not None:
        dcfg = GPT2Config.from_pretrained(str(decoder_dir), local_files_only=True)
        if not 1 <= d.n_layer <= dcfg.n_layer:
            raise ConfigError(f"{decoder_dir}: asked for {d.n_layer} blocks, checkpoint has {dcfg.n_layer}")
        if dcfg.vocab_size < vocab_size:
            raise ConfigError(f"{decoder_dir}: vocabulary {dcfg.vocab_size} < the tokenizer's {vocab_size}")
        for k, v in dict(common, n_layer=d.n_layer).items():
            setattr(dcfg, k, v)
        # float32 whatever the file holds (shipped parts are float16; transformers 5 would keep that)
        dec = GPT2LMHeadModel.from_pretrained(str(decoder_dir), config=dcfg, local_files_only=True,
                                              dtype=torch.float32)
    else:
        dcfg = GPT2Config(vocab_size=vocab_size, n_positions=d.n_positions, n_embd=d.n_embd, n_layer=d.n_layer,
                          n_head=d.n_head, activation_function="gelu_new", **common)
        dec = GPT2LMHeadModel(dcfg)
    return _assemble(enc, dec, bos_id, eos_id, pad_id)


def load_baseline(path, device: str | torch.device = "cpu"):
    """A saved baseline dir -> (model in eval mode, tokenizer, ImageConfig, card dict)."""

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / CARD).is_file():
        raise BridgeOCRError(f"{path}: not an encoder-decoder baseline dir (needs config.json and {CARD})")
    _quiet_transformers()
    _, _, _, ved = _ved_classes()
    model = ved.from_pretrained(str(path), local_files_only=True, dtype=torch.float32).to(device).eval()
    card = json.loads((path / CARD).read_text())
    tok = load_tokenizer(path / "tokenizer.json")
    image_cfg = ImageConfig(**{k: v for k, v in card.get("image", {}).items() if k in ImageConfig.__dataclass_fields__})
    return model, tok, image_cfg, card


# ------------------------------------------------------------------------------------------ decoding


@torch.no_grad()
def decode_batch(model, batch, tokenizer, max_new_tokens: int) -> list[str]:
    """Greedy decoding of one Batch with HF `generate` from the (masked) encoder outputs."""
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        enc_out = model.encoder(pixel_values=batch.images.to(dev), image_mask=batch.image_mask.to(dev))
        suppress = sorted({tokenizer.pad_id, tokenizer.bos_id} - {tokenizer.eos_id})
        out = model.generate(encoder_outputs=enc_out, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             decoder_start_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                             pad_token_id=tokenizer.pad_id, suppress_tokens=suppress)
    finally:
        model.train(was)
    texts = []
    for row in out[:, 1:].tolist():
        if tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode(row))
    return texts
