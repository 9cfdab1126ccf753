"""Line encoders: a ViT over rectangular patches (LineEncoder), or a pretrained HF ViT/DeiT/BEiT wrapped
behind the same interface (HFLineEncoder). Both: `forward(images, image_mask) -> (tokens, token_mask)`.

Padding never changes an item's tokens in LineEncoder: the conv stem re-zeroes padded columns after every
conv (so a real column next to padding sees exactly the zeros of a narrower batch), position embeddings are
a function of the column index only (sin-cos, or a learned table sliced, never resized to the batch
width), and attention ignores padded keys.

An encoder directory (`save_pretrained` / `load_encoder`) holds `config.json` + `model.safetensors`, plus
the CTC head when one was trained with it (encoder pretraining); `encoder.pretrained=DIR` reads it.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from bridgeocr.config import EncoderConfig, config_from_dict
from bridgeocr.errors import BridgeOCRError, ConfigError
from bridgeocr.models.ctc import CTCHead
from bridgeocr.models.model_dir import (
    config_value,
    hf_weights_checked,
    load_state_checked,
    read_config_json,
    safetensors_shapes,
)
from bridgeocr.models.onnx_graph import OnnxGraph
from bridgeocr.models.ppocr import PPOCR_IMAGE, PPOCREncoder, import_ppocr
from bridgeocr.shipped import resolve_pretrained

ENCODER_FORMAT = "bridgeocr-encoder"
ENCODER_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------- ViT blocks


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"encoder: dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, key_mask):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        mask = key_mask[:, None, None, :] | torch.eye(N, dtype=torch.bool, device=x.device)  # self: finite
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, key_mask):
        x = x + self.drop(self.attn(self.norm1(x), key_mask))
        return x + self.mlp(self.norm2(x))


def sincos_1d(n: int, dim: int, device=None) -> torch.Tensor:
    """[n, dim] sin-cos embedding of positions 0..n-1 (dim even)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32, device=device) / max(1, dim // 2))
    ang = torch.arange(n, dtype=torch.float32, device=device)[:, None] * omega[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def sincos_2d(rows: int, cols: int, dim: int, device=None) -> torch.Tensor:
    """[rows, cols, dim]: the first half of the channels encode the column, the second half the row."""
    dx = dim // 2 + (dim // 2) % 2
    dy = dim - dx
    ex = sincos_1d(cols, dx, device)[None].expand(rows, cols, dx)
    ey = sincos_1d(rows, dy, device)[:, None].expand(rows, cols, dy) if dy else ex[..., :0]
    return torch.cat([ex, ey], dim=-1)


# ---------------------------------------------------------------------------------------- LineEncoder


class LineEncoder(nn.Module):
    """Optional conv stem -> rectangular patches -> position embeddings -> pre-LN blocks -> LayerNorm.

    Tokens run left to right (column-major when patch_height < image height: all rows of column 0 first).
    A token is real if any of its image columns is real.
    """

    stem_channels = 32

    def __init__(self, cfg: EncoderConfig, image_height: int):
        super().__init__()
        if cfg.patch_height > image_height or image_height % cfg.patch_height:
            raise ConfigError(f"encoder.patch_height {cfg.patch_height} must divide the image height {image_height}")
        self.cfg, self.image_height = cfg, image_height
        self.rows = image_height // cfg.patch_height
        self.max_cols = math.ceil(cfg.max_width / cfg.patch_width)
        in_ch, ph, pw = 1, cfg.patch_height, cfg.patch_width
        if cfg.conv_stem:  # a cheap stem: 3x3 conv at full resolution, then a stride-2 3x3 conv (4x fewer pixels)
            if ph % 2 or pw % 2:
                raise ConfigError(f"encoder.conv_stem needs even patch sizes, got {ph}x{pw}")
            c = self.stem_channels
            self.stem = nn.ModuleList([nn.Conv2d(1, c // 2, 3, padding=1), nn.Conv2d(c // 2, c, 3, stride=2, padding=1)])
            in_ch, ph, pw = c, ph // 2, pw // 2
        else:
            self.stem = nn.ModuleList()
        self.patch = nn.Conv2d(in_ch, cfg.dim, (ph, pw), stride=(ph, pw))
        if cfg.pos_embedding == "learned":
            self.pos = nn.Parameter(torch.randn(self.rows, self.max_cols, cfg.dim) * 0.02)
        elif cfg.pos_embedding == "sincos":
            self.register_buffer("pos", None, persistent=False)
        else:
            raise ConfigError(f"encoder.pos_embedding: {cfg.pos_embedding!r} is not one of sincos | learned")
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    @property
    def d_out(self) -> int:
        return self.cfg.dim

    def token_mask(self, image_mask: torch.Tensor) -> torch.Tensor:
        """[B, W] real columns -> [B, N] real tokens (any real column in the patch)."""
        pw = self.cfg.patch_width
        B, W = image_mask.shape
        m = F.pad(image_mask, (0, (-W) % pw)).view(B, -1, pw).any(-1)  # [B, C]
        return m.repeat_interleave(self.rows, dim=1)

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor):
        """images [B, 1, H, W] (ink 1, pad 0), image_mask [B, W] -> (tokens [B, N, dim], mask [B, N])."""
        B, _, H, W = images.shape
        if H != self.image_height:
            raise ValueError(f"LineEncoder: image height {H} != {self.image_height}")
        image_mask = image_mask.to(torch.bool)
        pad = (-W) % self.cfg.patch_width
        x, col = F.pad(images, (0, pad)), F.pad(image_mask, (0, pad))[:, None, None, :].to(images.dtype)
        x = x * col
        for conv in self.stem:
            x = F.gelu(conv(x))
            col = col[..., :: conv.stride[1]]  # output column j is centred on input column j * stride
            x = x * col  # re-zero padding: the next conv sees what a narrower batch sees
        x = self.patch(x)  # [B, dim, R, C]
        R, C = x.shape[2], x.shape[3]
        if self.cfg.pos_embedding == "learned":
            if C > self.max_cols:
                raise ValueError(f"LineEncoder: width {W} > encoder.max_width {self.cfg.max_width}")
            pos = self.pos[:, :C]
        else:
            pos = sincos_2d(R, C, self.cfg.dim, x.device).to(x.dtype)
        x = x.permute(0, 3, 2, 1) + pos.transpose(0, 1)[None]  # [B, C, R, dim]
        x = self.drop(x.reshape(B, C * R, -1))
        mask = self.token_mask(image_mask)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x) * mask[..., None], mask

    def save_pretrained(self, path, ctc_head: CTCHead | None = None) -> None:
        save_encoder(path, self, ctc_head)

    @classmethod
    def from_pretrained(cls, path) -> nn.Module:
        return load_encoder(path)[0]


# ------------------------------------------------------------------------------------ HF ViT wrapper


class HFLineEncoder(nn.Module):
    """A pretrained HF ViT / DeiT / BEiT / DINOv2 (or a TrOCR's encoder half) behind the LineEncoder interface.

    Each line is read at its aspect ratio: its real columns are cropped, resized to `line_height` px
    (default: the model's `image_size`) by the width that keeps the aspect ratio, rounded up to a multiple
    of the patch width, and run with the checkpoint's 2-D position embeddings interpolated to that patch
    grid (`interpolate_pos_encoding`). CLS / distillation tokens are dropped and the patch tokens are
    reordered column-major (all rows of column 0 first), so tokens run left to right as in LineEncoder:
    a wider line gives more tokens. The mask is True on an item's own tokens, False on the zeros after them.

    Padding invariance: the HF ViT / DeiT / BEiT models take no attention mask, so lines are never padded:
    items are grouped by resized width and each group runs on its own, unpadded, and an item's tokens
    cannot depend on the batch's other lines (the cost: one forward per distinct width in the batch).
    Ink is flipped back to dark-on-light, gray is repeated to the model's channels, then normalised with
    the checkpoint's mean/std (0.5/0.5 if it has no preprocessor_config.json). `line_height` is stored in
    the HF config (`bridgeocr_line_height`), so a saved encoder dir rebuilds it.
    """

    hf_kinds = ("vit", "deit", "beit", "dinov2")
    line_height_key = "bridgeocr_line_height"

    def __init__(self, hf_model: nn.Module, image_height: int, mean=0.5, std=0.5, cfg: EncoderConfig | None = None,
                 line_height: int | None = None):
        super().__init__()
        if getattr(hf_model, "pooler", None) is not None:  # a TrOCR's encoder half has one; we never use it
            hf_model.pooler = None
        self.hf = hf_model
        self.image_height = image_height
        hc = hf_model.config
        self.image_size = hc.image_size if isinstance(hc.image_size, int) else hc.image_size[0]
        p = hc.patch_size
        self.patch = (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))
        self.line_height = int(line_height or getattr(hc, self.line_height_key, None) or self.image_size)
        if self.line_height < self.patch[0] or self.line_height % self.patch[0]:
            raise ConfigError(f"HF encoder: line height {self.line_height} is not a multiple of the model's "
                              f"patch height {self.patch[0]}")
        setattr(hc, self.line_height_key, self.line_height)  # saved with hf_config by encoder_meta
        self.interpolate_kw = ({"interpolate_pos_encoding": True}  # DINOv2 always interpolates
                               if "interpolate_pos_encoding" in inspect.signature(hf_model.forward).parameters else {})
        self.channels = getattr(hc, "num_channels", 3)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(-1)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(-1)[:, None, None], persistent=False)
        self.cfg = replace(cfg or EncoderConfig(), kind="hf", dim=hc.hidden_size)

    @classmethod
    def accepts(cls, hf_config: dict) -> bool:
        """An HF config.json this wraps: a ViT/DeiT/BEiT/DINOv2, or a vision-encoder-decoder (TrOCR) with one."""
        if hf_config.get("model_type") == "vision-encoder-decoder":
            return (hf_config.get("encoder") or {}).get("model_type") in cls.hf_kinds
        return hf_config.get("model_type") in cls.hf_kinds

    @property
    def d_out(self) -> int:
        return self.hf.config.hidden_size

    @classmethod
    def from_hf(cls, path, image_height: int, cfg: EncoderConfig | None = None,
                line_height: int | None = None) -> HFLineEncoder:
        """An HF ViT/DeiT/BEiT/DINOv2 dir, or a TrOCR (vision-encoder-decoder) dir: its encoder half only."""
        # lazy: transformers is slow to import and only Hugging Face paths need it
        from transformers import AutoModel, VisionEncoderDecoderModel

        path = Path(path)
        with hf_weights_checked(path):
            if read_config_json(path / "config.json").get("model_type") == "vision-encoder-decoder":
                model = VisionEncoderDecoderModel.from_pretrained(str(path), local_files_only=True).encoder
            else:
                try:  # ViT / DeiT / BEiT build a pooler we do not use
                    model = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
                except TypeError:
                    model = AutoModel.from_pretrained(str(path), local_files_only=True)
        mean, std = 0.5, 0.5
        pp = path / "preprocessor_config.json"
        if pp.is_file():
            data = read_config_json(pp)
            mean, std = data.get("image_mean", mean), data.get("image_std", std)
        return cls(model, image_height, mean, std, cfg, line_height)

    def resized_width(self, width: int, image_height: int) -> int:
        """A line's width once resized to `line_height`, rounded up to a multiple of the patch width."""
        pw = self.patch[1]
        return max(1, -(-width * self.line_height // (image_height * pw))) * pw

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor):
        """images [B, 1, H, W] (ink 1, pad 0), image_mask [B, W] -> (tokens [B, N, d_out], mask [B, N])."""
        B, _, H, _ = images.shape
        (ph, pw), Lh = self.patch, self.line_height
        rows = Lh // ph
        widths = image_mask.to(torch.long).sum(1).clamp(min=1).tolist()
        sizes = [self.resized_width(w, H) for w in widths]
        dtype = next(self.hf.parameters()).dtype
        out: list[torch.Tensor | None] = [None] * B
        for size in sorted(set(sizes)):  # one unpadded forward per resized width: padding cannot leak in
            idx = [b for b in range(B) if sizes[b] == size]
            pix = torch.cat([F.interpolate(1.0 - images[b:b + 1, :, :, :widths[b]], size=(Lh, size), mode="bilinear",
                                           align_corners=False, antialias=True) for b in idx])
            pix = ((pix.expand(-1, self.channels, -1, -1) - self.mean) / self.std).to(dtype)
            y = self.hf(pixel_values=pix, **self.interpolate_kw).last_hidden_state
            cols = size // pw
            y = y[:, y.shape[1] - rows * cols:]  # drop CLS / distillation tokens (they come first)
            y = y.reshape(len(idx), rows, cols, -1).transpose(1, 2).reshape(len(idx), cols * rows, -1)
            for i, b in enumerate(idx):  # raster (row-major) -> column-major: tokens run left to right
                out[b] = y[i]
        tokens = nn.utils.rnn.pad_sequence(out, batch_first=True)
        n = torch.tensor([t.shape[0] for t in out], device=tokens.device)
        return tokens, torch.arange(tokens.shape[1], device=tokens.device)[None] < n[:, None]

    def save_pretrained(self, path, ctc_head: CTCHead | None = None) -> None:
        save_encoder(path, self, ctc_head)


# ------------------------------------------------------------------------------------ build / save / load


def is_encoder_dir(path) -> bool:
    """A bridgeocr encoder directory (its config.json says so); a broken config.json -> BridgeOCRError."""

    cfg = Path(path) / "config.json"
    return cfg.is_file() and read_config_json(cfg).get("format") == ENCODER_FORMAT


ENCODER_KINDS = ("vit", "ppocr")


def build_encoder(cfg: EncoderConfig, image_height: int) -> nn.Module:
    """A fresh encoder, or the one `cfg.pretrained` names (our encoder dir, or an HF ViT/DeiT/BEiT dir);
    kind `ppocr` reads PP-OCR's recogniser from `cfg.onnx` (default: the rapidocr wheel's)."""
    if cfg.pretrained:
        return load_encoder(cfg.pretrained, image_height)[0]
    if cfg.kind == "ppocr":
        encoder = import_ppocr(cfg.onnx, cfg=cfg)[0]
        check_image_height(encoder, image_height, cfg.onnx or "encoder.kind=ppocr")
        return encoder
    if cfg.kind != "vit":
        raise ConfigError(f"encoder.kind: {cfg.kind!r} is not one of {' | '.join(ENCODER_KINDS)} "
                          "(or set encoder.pretrained to a directory)")
    return LineEncoder(cfg, image_height)


def check_image_height(encoder: nn.Module, image_height: int | None, where) -> None:
    if image_height is not None and encoder.image_height != image_height:
        raise ConfigError(f"{where}: the encoder reads lines {encoder.image_height} px high, the data are "
                          f"{image_height} px: set data.image.height={encoder.image_height}")


def encoder_image(encoder_cfg: EncoderConfig) -> dict | None:
    """The image settings an encoder brings with it (a saved dir's `image`, or kind ppocr's), else None."""

    if encoder_cfg.pretrained:
        path = resolve_pretrained(encoder_cfg.pretrained)
        cfg_file = Path(path) / "config.json"
        if cfg_file.is_file():
            meta = read_config_json(cfg_file)
            if meta.get("format") == ENCODER_FORMAT:
                return meta.get("image")
        return None
    return dict(PPOCR_IMAGE) if encoder_cfg.kind == "ppocr" else None


def adopt_encoder_image(cfg) -> None:
    """An encoder that brings its image settings (PP-OCR: 48 px lines) sets `cfg.data.image` (an
    ExperimentConfig's) to them: how a model reads is a models concern."""
    image = encoder_image(cfg.model.encoder)
    if not image:
        return
    for key in ("height", "max_width", "width_multiple", "width_scale"):
        if key in image and getattr(cfg.data.image, key) != image[key]:
            print(f"the encoder reads data.image.{key}={image[key]} (was {getattr(cfg.data.image, key)})",
                  flush=True)
            setattr(cfg.data.image, key, float(image[key]) if key == "width_scale" else int(image[key]))


def encoder_meta(encoder: nn.Module, ctc_vocab_size: int | None = None, ctc_upsample: int = 1) -> dict:
    """What `encoder_from_meta` needs to rebuild the encoder's structure (JSON-able)."""
    hf = isinstance(encoder, HFLineEncoder)
    kind = "hf" if hf else "ppocr" if isinstance(encoder, PPOCREncoder) else "line"
    meta = {"format": ENCODER_FORMAT, "version": ENCODER_FORMAT_VERSION, "kind": kind,
            "encoder": asdict(replace(encoder.cfg, pretrained=None)), "image_height": encoder.image_height,
            "ctc_vocab_size": ctc_vocab_size, "ctc_upsample": ctc_upsample}
    if kind == "ppocr":  # the graph (nodes, initializer shapes) and the image settings it was trained on
        meta.update(image=encoder.image, source=encoder.source, d_out=encoder.d_out, graph=encoder.graph.spec)
    if hf:
        meta["hf_config"] = encoder.hf.config.to_dict()
        meta["norm"] = {"mean": encoder.mean.flatten().tolist(), "std": encoder.std.flatten().tolist()}
    return meta


def save_encoder(path, encoder: nn.Module, ctc_head: CTCHead | None = None) -> None:
    """config.json + model.safetensors (keys `encoder.*`, `ctc_head.*`)."""

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = encoder_meta(encoder, None if ctc_head is None else ctc_head.vocab_size,
                        1 if ctc_head is None else ctc_head.upsample)
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    if ctc_head is not None:
        tensors.update({f"ctc_head.{k}": v.detach().cpu().contiguous() for k, v in ctc_head.state_dict().items()})
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(meta, indent=2))


def encoder_from_meta(meta: dict) -> nn.Module:
    """Rebuild an encoder's structure (random weights) from its saved config."""
    cfg = config_from_dict(meta["encoder"], EncoderConfig)
    if meta.get("kind") == "ppocr":
        graph = OnnxGraph(meta["graph"], shapes=meta["graph"]["initializers"])
        return PPOCREncoder(graph, cfg, meta["d_out"], meta.get("image"), meta.get("source", ""))
    if meta.get("kind") == "hf":
        # lazy: transformers is slow to import and only Hugging Face paths need it
        from transformers import AutoConfig, AutoModel

        hc = dict(meta["hf_config"])
        hf_cfg = AutoConfig.for_model(hc.pop("model_type"), **hc)
        try:
            model = AutoModel.from_config(hf_cfg, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_config(hf_cfg)
        norm = meta.get("norm", {"mean": 0.5, "std": 0.5})
        return HFLineEncoder(model, meta["image_height"], norm["mean"], norm["std"], cfg)
    return LineEncoder(cfg, meta["image_height"])


def load_encoder(path, image_height: int | None = None) -> tuple[nn.Module, CTCHead | None]:
    """Our encoder dir -> (encoder, CTC head or None); an HF ViT/DeiT/BEiT dir -> (HFLineEncoder, None).
    A broken config.json, a truncated or corrupt model.safetensors, missing / extra / wrong-shape tensors ->
    one BridgeOCRError naming the file (models/model_dir.py)."""

    path = resolve_pretrained(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{path}: not an encoder directory (no config.json)")
    meta = read_config_json(cfg_file)
    if meta.get("format") != ENCODER_FORMAT:
        if HFLineEncoder.accepts(meta):
            return HFLineEncoder.from_hf(path, image_height or 32), None
        raise ConfigError(f"{path}: neither a bridgeocr encoder nor an HF ViT/DeiT/BEiT/DINOv2 (or TrOCR) directory")
    config_value(meta, "encoder", cfg_file, dict)
    config_value(meta, "image_height", cfg_file, int)
    ctc_vocab = meta.get("ctc_vocab_size")
    if ctc_vocab is not None:
        config_value(meta, "ctc_vocab_size", cfg_file, int)
        if "ctc_upsample" in meta:
            config_value(meta, "ctc_upsample", cfg_file, int)
    weights = path / "model.safetensors"
    safetensors_shapes(weights)  # a truncated / garbage file is refused before anything is built
    try:
        encoder = encoder_from_meta(meta)
        head = CTCHead(encoder.d_out, ctc_vocab, meta.get("ctc_upsample", 1)) if ctc_vocab else None
    except BridgeOCRError as exc:
        raise ConfigError(f"{cfg_file}: {exc}") from None
    except Exception as exc:  # a key of the right type with a value no encoder is built from
        raise ConfigError(f"{cfg_file}: cannot build the encoder it describes "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    check_image_height(encoder, image_height, path)
    parts = nn.ModuleDict({"encoder": encoder} if head is None else {"encoder": encoder, "ctc_head": head})
    load_state_checked(weights, parts)  # keys `encoder.*`, `ctc_head.*`, exactly
    return encoder, head
