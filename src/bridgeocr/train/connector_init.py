"""Start a token-wise connector near what the GPT already reads (`model.connector.init=ctc`).

The shipped GPT learnt to read a *stretched* prefix (train/prefix_reading.py): per visual token, the mean
embedding of the characters it covers, blanks as the embedding of id 0 -- exactly what the `ctc_embed`
connector computes from the encoder's CTC posteriors. A randomly initialised projection starts far from
that and the GPT path first has to discover it. Here the projection is fitted to it in closed form: ridge
regression from the encoder's tokens of some training lines to their `ctc_embed` targets, written into the
connector's weights, with a shift that keeps a GELU in its linear range and a LayerNorm's gain and bias set to
the targets' scale and mean. No library fits a regression *into* a torch connector's layers; the fit itself
is `torch.linalg.solve`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bridgeocr.errors import ConfigError
from bridgeocr.models.connectors.ctc import CTCEmbed
from bridgeocr.models.connectors.reduce import Reduce

__all__ = ["INITS", "fit_projector_to_ctc"]

INITS = ("random", "ctc")
FITTED_KINDS = ("linear", "linear_ln", "linear_gelu_ln", "mlp", "qformer")
GELU_SHIFT = 3.0  # pre-activations y + 3: GELU(z) = z within 0.4 % for z >= 3, so GELU(y + 3) ~ y + 3


@torch.no_grad()
def _tokens_and_targets(model, head, loader, max_tokens: int, norm=None) -> tuple[torch.Tensor, torch.Tensor]:
    target = CTCEmbed(None, head.proj.in_features, model.decoder.n_embd)
    target.init_from(head, model.decoder.wte)
    reduce = model.connector.reduce  # merged tokens are fitted to the mean of their targets
    pool = Reduce("pool" if reduce.kind else None, reduce.k, model.decoder.n_embd)
    xs, ys, n = [], [], 0
    for batch in loader:
        if batch is None:
            continue
        tokens, mask = model.encoder_tokens(batch.images, batch.image_mask)
        y, _ = pool(*target(tokens, mask))
        tokens, mask = reduce(tokens, mask)
        if norm is not None:
            tokens = norm(tokens)
        xs.append(tokens[mask].float())
        ys.append(y[mask].float())
        n += int(mask.sum())
        if n >= max_tokens:
            break
    if not xs:
        raise ConfigError("model.connector.init=ctc: no training line to fit the connector on")
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def fit_projector_to_ctc(model, head, loader, max_tokens: int = 60_000, ridge: float = 1e-2) -> dict:
    """Fit `model.connector` (kind linear / linear_ln / linear_gelu_ln / mlp, or a qformer with locality) to
    the `ctc_embed` prefix of the encoder tokens in `loader`, given the encoder's CTC `head`.
    Returns {"tokens", "r2"}: how much of the targets' variance the fitted linear map explains (1 = all)."""
    kind = model.cfg.connector.kind
    if kind not in FITTED_KINDS:
        raise ConfigError(f"model.connector.init=ctc: fits kinds {', '.join(FITTED_KINDS)}, not {kind}")
    body = model.connector.body
    was_training = model.training
    model.eval()
    x, y = _tokens_and_targets(model, head, loader, max_tokens, body.blocks[0].ln_ctx if kind == "qformer" else None)
    model.train(was_training)
    xa = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    gram = xa.T @ xa + ridge * len(x) * torch.eye(xa.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, xa.T @ y.double()).float()  # [d_in + 1, d_model]
    pred = xa.float() @ w
    r2 = 1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp(min=1e-12))
    if kind == "qformer":
        _set_qformer(body, w, y)
        return {"tokens": len(x), "r2": r2}
    layers = list(body.proj)
    first = layers[0]
    first.weight.copy_(w[:-1].T)
    first.bias.copy_(w[-1])
    if kind in ("linear_gelu_ln", "mlp"):
        first.bias.add_(GELU_SHIFT)
    if kind == "mlp":
        last = layers[-1]
        last.weight.copy_(torch.eye(last.out_features, last.in_features))
        last.bias.fill_(-GELU_SHIFT)
    if isinstance(layers[-1], nn.LayerNorm):  # LN(y + c) standardises each token: give back y's scale and mean
        ln = layers[-1]
        ln.weight.fill_(float(y.std(1).mean()))
        ln.bias.copy_(y.mean(0))
    return {"tokens": len(x), "r2": r2}


def _set_qformer(body, w: torch.Tensor, y: torch.Tensor) -> None:
    """A Q-Former that starts as a positional average of the fitted prefix: the first cross-attention
    attends by its locality prior alone (key weights zero), its values are the fitted map and its output the
    identity; every other residual branch starts at zero (as ReZero / Fixup start residual nets), so query
    i = the mean prefix over its share of the line, and the final LayerNorm gives back the targets' scale."""
    if body.locality <= 0:
        raise ConfigError("model.connector.init=ctc with a qformer needs connector.locality > 0 (each query "
                          "must start on its own share of the line)")
    first = body.blocks[0].cross_attn
    first.k.weight.zero_()
    first.k.bias.zero_()
    first.v.weight.copy_(w[:-1].T)
    first.v.bias.copy_(w[-1])
    first.o.weight.copy_(torch.eye(first.o.out_features))
    first.o.bias.zero_()
    for i, blk in enumerate(body.blocks):
        branches = [blk.self_attn.o, blk.ffn[2]] + ([blk.cross_attn.o] if i > 0 else [])
        for lin in branches:
            lin.weight.zero_()
            lin.bias.zero_()
    body.ln.weight.fill_(float(y.std(1).mean()))
    body.ln.bias.copy_(y.mean(0))
    body.proj.weight.copy_(torch.eye(body.proj.out_features))
    body.proj.bias.zero_()
