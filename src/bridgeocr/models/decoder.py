"""GPT: the GPT-2 architecture written nanoGPT-style, so we own the KV cache and the attach point.

Weights are HF-compatible (`GPT.from_hf` / `GPT.save_hf` read and write a `GPT2LMHeadModel` directory;
HF's Conv1D stores weights as [in, out], we use nn.Linear [out, in] and transpose on the way).

Visual prefix (design choices):
- **Where.** `attach_layer=0`: the prefix is concatenated in front of the text embeddings. `attach_layer=k>0`:
  the text alone runs through blocks < k (exactly the text-only LM), then [prefix; text hidden] runs through
  blocks >= k (cached keys of blocks < k hold text only).
- **Positions.** The prefix gets *no* GPT position embedding (at any attach point): the encoder already put
  its positions into the visual tokens, and this keeps the number of visual tokens free of `n_positions`.
  Text positions start at 0 whether or not a prefix is present, so the image path and the text-only LM
  (the KD teacher / reference path) see the same text positions.
- **Attention.** Prefix-LM: prefix tokens attend bidirectionally among themselves (never to text), text
  attends to every real prefix token and causally to text. `prefix_mask` False and `attention_mask` False
  keys are never attended (every query may always see itself, so fully padded rows stay finite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from bridgeocr.config import DecoderConfig
from bridgeocr.errors import ConfigError
from bridgeocr.models.model_dir import hf_weights_checked, names_list

# --------------------------------------------------------------------------------------------- blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ConfigError(f"decoder: n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, past_kv=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig, eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=eps)
        self.mlp = MLP(cfg)

    def forward(self, x, mask, past_kv=None):
        a, kv = self.attn(self.ln_1(x), mask, past_kv)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


# ----------------------------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Per-block (k, v) [B, H, L, hd] plus what the masks need. Blocks >= attach_layer hold [prefix; text]."""

    kv: list  # list[tuple[Tensor, Tensor]], one per block
    text_mask: torch.Tensor  # [B, T_past] bool
    prefix_mask: torch.Tensor | None  # [B, M] bool (None: no prefix)
    attach_layer: int = 0

    @property
    def n_text(self) -> int:
        return self.text_mask.shape[1]


class StepCache:
    """The KV cache of one-token decoding steps (greedy, beam, joint search), laid out for their costs.

    - The prefix's keys / values are kept once per *item*: prefix tokens never attend to text, so every beam
      of a line has the same ones. Reordering beams copies only the text part, never the (long) prefix.
    - The text's keys / values sit in buffers with room to grow (doubled when full), written in place:
      no concatenation of the whole cache per step.
    - Attention of the one new query is computed over the two parts with one shared softmax (by hand:
      SDPA wants the keys in one tensor, i.e. the copy this layout avoids).

    Rows are (item, beam) pairs: `items[r]` is the line of row r. Build with `StepCache.from_prefill`."""

    def __init__(self, prefix_kv: list, prefix_valid: torch.Tensor | None, text_kv: list, n_text: int,
                 items: torch.Tensor, attach_layer: int):
        self.prefix_kv, self.prefix_valid = prefix_kv, prefix_valid  # per block (k, v) [B, H, M, hd] or None
        self.text_kv, self.n_text = text_kv, n_text  # per block (k, v) [R, H, capacity, hd]
        self.items, self.attach_layer = items, attach_layer
        self._rows_prefix: tuple | None = None  # (items, per-block prefix k / v gathered for them, mask)

    @classmethod
    def from_prefill(cls, cache: KVCache, room: int = 32) -> StepCache:
        """The cache of a prefill call (prefix + first tokens, no padding in the text) -> a StepCache."""
        M = 0 if cache.prefix_mask is None else cache.prefix_mask.shape[1]
        prefix_kv, text_kv = [], []
        for i, (k, v) in enumerate(cache.kv):
            joint = cache.prefix_mask is not None and i >= cache.attach_layer
            prefix_kv.append((k[:, :, :M], v[:, :, :M]) if joint else None)
            k, v = (k[:, :, M:], v[:, :, M:]) if joint else (k, v)
            text_kv.append(tuple(cls._with_room(t, t.shape[2] + room) for t in (k, v)))
        items = torch.arange(cache.text_mask.shape[0], device=cache.text_mask.device)
        return cls(prefix_kv, cache.prefix_mask, text_kv, cache.n_text, items, cache.attach_layer)

    @staticmethod
    def _with_room(t: torch.Tensor, capacity: int) -> torch.Tensor:
        out = t.new_empty(t.shape[0], t.shape[1], capacity, t.shape[3])
        out[:, :, : t.shape[2]] = t
        return out

    def reorder(self, parents: torch.Tensor) -> StepCache:
        """Row i continues row parents[i] (beam reordering, dropping finished lines): the text part is
        copied, the prefix part is shared."""
        n = self.n_text
        text_kv = [tuple(t.index_select(0, parents) if t.shape[2] <= 2 * n else
                         self._with_room(t[:, :, :n].index_select(0, parents), 2 * n) for t in kv)
                   for kv in self.text_kv]
        out = StepCache(self.prefix_kv, self.prefix_valid, text_kv, n, self.items[parents], self.attach_layer)
        if self._rows_prefix is not None and torch.equal(self._rows_prefix[0], out.items):
            out._rows_prefix = self._rows_prefix  # same lines in the same rows (beams reordered within a line)
        return out

    def append(self, block: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new token's k / v [R, H, 1, hd] of one block -> that block's text keys / values so far."""
        tk, tv = self.text_kv[block]
        if tk.shape[2] == self.n_text:
            tk, tv = (self._with_room(t, 2 * self.n_text + 1) for t in (tk, tv))
            self.text_kv[block] = (tk, tv)
        tk[:, :, self.n_text], tv[:, :, self.n_text] = k[:, :, 0], v[:, :, 0]
        return tk[:, :, : self.n_text + 1], tv[:, :, : self.n_text + 1]

    def rows_prefix(self, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(prefix k, v [R * H, M, hd], an additive mask [R * H, 1, M]: 0 on real prefix tokens, -inf on padding)
        of each row for block `block`, gathered again only when the rows change item."""
        if self.prefix_kv[block] is None:
            return None
        if self._rows_prefix is None:
            H = self.prefix_kv[block][0].shape[1]
            flat = [None if kv is None else tuple(t[self.items].flatten(0, 1) for t in kv) for kv in self.prefix_kv]
            valid = self.prefix_valid[self.items]  # [R, M] -> an additive mask per (row, head)
            bias = torch.zeros(valid.shape, dtype=flat[block][0].dtype, device=valid.device)
            bias = bias.masked_fill(~valid, float("-inf")).repeat_interleave(H, 0)[:, None, :]
            self._rows_prefix = (self.items, flat, bias)
        _, flat, bias = self._rows_prefix
        return (*flat[block], bias)


def _attn_mask(text_q: int, key_valid: torch.Tensor, n_prefix_keys: int, n_prefix_q: int,
               text_offset: int) -> torch.Tensor:
    """Boolean SDPA mask [B, 1, Lq, Lk] (True = attend) for queries [prefix?; new text], keys [prefix?; text].

    text_q: number of new text queries. Keys: n_prefix_keys prefix keys then all text keys (past + new);
    queries: n_prefix_q prefix queries (0 or n_prefix_keys) then the new text, text index from text_offset.
    """
    B, Lk = key_valid.shape
    dev = key_valid.device
    k_is_prefix = torch.arange(Lk, device=dev) < n_prefix_keys
    k_pos = torch.arange(Lk, device=dev) - n_prefix_keys  # text index of each key
    q_is_prefix = torch.arange(n_prefix_q + text_q, device=dev) < n_prefix_q
    q_pos = torch.arange(n_prefix_q + text_q, device=dev) - n_prefix_q + text_offset
    text_ok = (~q_is_prefix)[:, None] & (~k_is_prefix)[None, :] & (k_pos[None, :] <= q_pos[:, None])
    allowed = k_is_prefix[None, :] | text_ok  # [Lq, Lk]
    allowed = allowed[None] & key_valid[:, None, :]  # [B, Lq, Lk]
    # every query may see itself: keeps fully padded rows finite (their outputs are never used)
    self_key = torch.cat([torch.arange(n_prefix_q, device=dev),
                          n_prefix_keys + text_offset + torch.arange(text_q, device=dev)])
    eye = torch.zeros(n_prefix_q + text_q, Lk, dtype=torch.bool, device=dev)
    eye[torch.arange(n_prefix_q + text_q, device=dev), self_key] = True
    return (allowed | eye[None])[:, None]


# ---------------------------------------------------------------------------------------------- GPT


class GPT(nn.Module):
    """GPT-2 (wte, wpe, blocks, ln_f, tied lm_head) that can read a visual prefix before any block."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, layer_norm_epsilon: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.layer_norm_epsilon = layer_norm_epsilon
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, layer_norm_epsilon) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=layer_norm_epsilon)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    @property
    def n_embd(self) -> int:
        return self.cfg.n_embd

    def _place_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        """With `prefix_positions`, visual token i gets the GPT's position embedding i, as the text's i-th
        token does: a line is read left to right, so text position t finds its letters near visual token
        ~t from the first step (an alignment prior the decoder refines), instead of learning it by content."""
        if not self.cfg.prefix_positions:
            return prefix
        M = prefix.shape[1]
        if M > self.cfg.n_positions:
            raise ValueError(f"GPT.forward: {M} visual tokens > n_positions {self.cfg.n_positions}")
        return prefix + self.wpe(torch.arange(M, device=prefix.device))[None]

    def forward(self, input_ids, attention_mask=None, prefix=None, prefix_mask=None, attach_layer: int = 0,
                past: KVCache | None = None, position_offset: int | None = None):
        """-> (logits [B, T, V] for the text positions only, new KVCache).

        input_ids [B, T]; attention_mask [B, T] (True/1 = real; right padding). prefix [B, M, n_embd] and
        prefix_mask [B, M] (True = real) enter before block `attach_layer`. With `past`, the prefix and
        attach layer come from the cache; `position_offset` defaults to the number of cached text tokens.
        """
        B, T = input_ids.shape
        dev = input_ids.device
        text_mask = (torch.ones(B, T, dtype=torch.bool, device=dev) if attention_mask is None
                     else attention_mask.to(torch.bool))
        if past is not None:
            if prefix is not None:
                raise ValueError("GPT.forward: pass the prefix on the first call only (it lives in `past`)")
            attach_layer, prefix_mask, n_past = past.attach_layer, past.prefix_mask, past.n_text
            full_text_mask = torch.cat([past.text_mask, text_mask], dim=1)
        else:
            n_past, full_text_mask = 0, text_mask
            if prefix is not None:
                if prefix.shape[-1] != self.cfg.n_embd:
                    raise ValueError(f"GPT.forward: prefix dim {prefix.shape[-1]} != n_embd {self.cfg.n_embd}")
                if prefix_mask is None:
                    prefix_mask = torch.ones(prefix.shape[:2], dtype=torch.bool, device=dev)
                prefix_mask = prefix_mask.to(torch.bool)
        if not 0 <= attach_layer < max(1, len(self.h)):
            raise ValueError(f"GPT.forward: attach_layer {attach_layer} not in [0, {len(self.h) - 1}]")
        offset = n_past if position_offset is None else position_offset
        if offset + T > self.cfg.n_positions:
            raise ValueError(f"GPT.forward: {offset + T} text positions > n_positions {self.cfg.n_positions}")
        M = 0 if prefix_mask is None else prefix_mask.shape[1]

        pos = torch.arange(offset, offset + T, device=dev)
        x = self.drop(self.wte(input_ids) + self.wpe(pos)[None])
        new_prefix_q = M if (past is None and prefix is not None) else 0  # prefix queries enter once

        # two masks: blocks before the attach point see text only, blocks from it see [prefix; text]
        mask_text = _attn_mask(T, full_text_mask, 0, 0, n_past)
        if prefix_mask is not None:
            key_valid = torch.cat([prefix_mask, full_text_mask], dim=1)
            mask_joint = _attn_mask(T, key_valid, M, new_prefix_q, n_past)
        new_kv = []
        for i, block in enumerate(self.h):
            joint = prefix_mask is not None and i >= attach_layer
            if joint and i == attach_layer and new_prefix_q:
                x = torch.cat([self._place_prefix(prefix).to(x.dtype), x], dim=1)
            x, kv = block(x, mask_joint if joint else mask_text, None if past is None else past.kv[i])
            new_kv.append(kv)
        x = self.ln_f(x[:, x.shape[1] - T:])
        logits = self.lm_head(x)
        return logits, KVCache(new_kv, full_text_mask, prefix_mask, attach_layer)

    def step(self, tokens: torch.Tensor, cache: StepCache) -> torch.Tensor:
        """One new token per row after `cache` -> logits [R, V]; `cache` gains the token (in place).

        The same function as `forward(tokens[:, None], past=...)` (tests/test_models_decoding.py compares
        them token for token), at a fraction of the memory traffic: see StepCache."""
        n = cache.n_text
        if n + 1 > self.cfg.n_positions:
            raise ValueError(f"GPT.step: {n + 1} text positions > n_positions {self.cfg.n_positions}")
        x = self.wte(tokens) + self.wpe.weight[n]  # [R, C]
        R, C = x.shape
        H = self.cfg.n_head
        scale = 1.0 / math.sqrt(C // H)
        for i, block in enumerate(self.h):
            attn = block.attn
            q, k, v = (t.view(R, H, 1, C // H) for t in attn.c_attn(block.ln_1(x)).split(C, dim=1))
            tk, tv = cache.append(i, k, v)
            scores = (q @ tk.transpose(-1, -2)) * scale  # [R, H, 1, n + 1]
            prefix = cache.rows_prefix(i)
            if prefix is None:
                y = scores.softmax(-1) @ tv
            else:
                pk, pv, bias = prefix
                p_scores = torch.baddbmm(bias, q.reshape(R * H, 1, -1), pk.transpose(-1, -2), alpha=scale)
                w = torch.cat([p_scores.view(R, H, 1, -1), scores], dim=-1).softmax(-1)
                M = pk.shape[1]
                y = torch.baddbmm((w[..., M:] @ tv).view(R * H, 1, -1), w[..., :M].reshape(R * H, 1, M), pv)
            x = x + attn.c_proj(y.reshape(R, C))
            x = x + block.mlp(block.ln_2(x))
        cache.n_text = n + 1
        return self.lm_head(self.ln_f(x))

    # ------------------------------------------------------------------------------ HF GPT-2 weights

    _TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf(cls, path: str | Path, n_layer: int | None = None, dropout: float = 0.0) -> GPT:
        """Load a local HF GPT-2-style directory (offline), keeping its first `n_layer` blocks."""
        # lazy: transformers is slow to import and only Hugging Face paths need it
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a 40-tensor load needs no bar between our own progress lines

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a HF model directory (no config.json)")
        with hf_weights_checked(path):  # broken config.json / weights -> one BridgeOCRError naming the file
            hf, info = GPT2LMHeadModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
        # transformers fills tensors missing from the file with random values and only warns: refuse them
        missing = [k for k in info.get("missing_keys", ()) if not k.endswith((".attn.bias", ".attn.masked_bias"))
                   and k != "lm_head.weight"]  # tied to wte
        mismatched = [k for k, *_ in info.get("mismatched_keys", ())]
        if missing or mismatched:
            what = [f"missing tensors {names_list(missing)}"] if missing else []
            what += [f"wrong shape: {names_list(mismatched)}"] if mismatched else []
            where = path / "model.safetensors" if (path / "model.safetensors").is_file() else path
            raise ConfigError(f"{where}: " + "; ".join(what))
        hc = hf.config
        n_layer = hc.n_layer if n_layer is None else n_layer
        if not 1 <= n_layer <= hc.n_layer:
            raise ConfigError(f"{path}: asked for {n_layer} blocks, checkpoint has {hc.n_layer}")
        if hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"{path}: activation {hc.activation_function!r} unsupported (GPT-2 uses gelu_new)")
        cfg = DecoderConfig(n_layer=n_layer, n_embd=hc.n_embd, n_head=hc.n_head, n_positions=hc.n_positions,
                            dropout=dropout, pretrained=str(path),
                            prefix_positions=bool(getattr(hc, "bridgeocr_prefix_positions", False)))
        model = cls(cfg, hc.vocab_size, layer_norm_epsilon=hc.layer_norm_epsilon)
        sd = {}
        for k, v in hf.state_dict().items():
            if not k.startswith("transformer."):
                continue
            k = k[len("transformer."):]
            if k.startswith("h.") and int(k.split(".")[1]) >= n_layer:
                continue
            if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
                continue
            sd[k] = v.t().contiguous() if k.endswith(cls._TRANSPOSED) else v
        sd["lm_head.weight"] = sd["wte.weight"]
        model.load_state_dict(sd, strict=True)
        return model

    def hf_config(self):
        from transformers import GPT2Config  # lazy, as in from_hf

        c = self.cfg
        return GPT2Config(vocab_size=self.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd,
                          n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                          resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                          layer_norm_epsilon=self.layer_norm_epsilon, tie_word_embeddings=True,
                          bos_token_id=None, eos_token_id=None, architectures=["GPT2LMHeadModel"],
                          bridgeocr_prefix_positions=bool(c.prefix_positions))  # how it learnt to read a prefix

    def save_hf(self, path: str | Path, tokenizer=None) -> None:
        """Write a `GPT2LMHeadModel` directory (config.json + model.safetensors) that transformers loads.

        `tokenizer` (a bridgeocr tokenizer): written beside the weights (tokenizer.json, tokenizer_config.json,
        special_tokens_map.json) and its bos/eos/pad ids put in config.json, so that the directory is a
        complete HF model: `AutoModelForCausalLM.from_pretrained(dir)` + `AutoTokenizer.from_pretrained(dir)`
        read and generate (the decoder's vocabulary may be larger than the tokenizer: a padded pretrained LM).
        """

        path = Path(path)
        if tokenizer is not None and int(tokenizer.vocab_size) > self.vocab_size:
            raise ConfigError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the decoder's vocabulary "
                              f"{self.vocab_size}")
        path.mkdir(parents=True, exist_ok=True)
        sd = {}
        for k, v in self.state_dict().items():
            if k == "lm_head.weight":
                continue  # tied to wte
            v = v.detach().cpu()
            sd["transformer." + k] = (v.t() if k.endswith(self._TRANSPOSED) else v).contiguous()
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
        config = self.hf_config()
        if tokenizer is not None:
            config.bos_token_id, config.eos_token_id = int(tokenizer.bos_id), int(tokenizer.eos_id)
            config.pad_token_id = int(tokenizer.pad_id)
            tokenizer.save(path / "tokenizer.json")
        config.save_pretrained(str(path))


def apply_freeze(gpt: GPT, spec: str) -> None:
    """`decoder.freeze` on our GPT (freeze_blocks)."""
    freeze_blocks(gpt, gpt.h, gpt.ln_f, spec)


def freeze_blocks(decoder: nn.Module, blocks, final_norm: nn.Module, spec: str) -> None:
    """`none`: all trainable. `all`: nothing trainable. `top:N`: only the top N blocks (+ the final norm) train.
    Embeddings (wte = tied lm_head, wpe) are frozen by `all` and `top:N`. One rule for every decoder: ours
    and the baseline's GPT-2 (train/encdec.py, which then keeps its new cross-attention trainable)."""
    spec = (spec or "none").strip()
    if spec == "none":
        decoder.requires_grad_(True)
        return
    decoder.requires_grad_(False)
    if spec == "all":
        return
    if spec.startswith("top:"):
        try:
            n = int(spec[4:])
        except ValueError:
            n = -1
        if 0 <= n <= len(blocks):
            for block in blocks[len(blocks) - n:]:
                block.requires_grad_(True)
            if n > 0:
                final_norm.requires_grad_(True)
            return
    raise ConfigError(f"decoder.freeze: {spec!r} is not one of none | all | top:N (0 <= N <= {len(blocks)})")
