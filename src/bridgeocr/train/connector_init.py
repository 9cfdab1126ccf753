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

__all__ = ["INITS", "fit_projector_to_ctc"]

INITS = ("random", "ctc")
FITTED_KINDS = ("linear", "linear_ln", "linear_gelu_ln", "mlp")
GELU_SHIFT = 3.0  # pre-activations y + 3: GELU(z) = z within 0.4 % for z >= 3, so GELU(y + 3) ~ y + 3


@torch.no_grad()
def _tokens_and_targets(model, head, loader, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    from bridgeocr.config import ConnectorConfig
    from bridgeocr.models.connectors import CTCEmbed

    target = CTCEmbed(ConnectorConfig(kind="ctc_embed"), head.proj.in_features, model.decoder.n_embd)
    target.init_from(head, model.decoder.wte)
    xs, ys, n = [], [], 0
    for batch in loader:
        if batch is None:
            continue
        tokens, mask = model.encoder_tokens(batch.images, batch.image_mask)
        y, _ = target(tokens, mask)
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
    """Fit `model.connector` (kind linear / linear_ln / linear_gelu_ln / mlp) to the `ctc_embed` prefix of
    the encoder tokens in `loader`, given the encoder's CTC `head`. Returns {"tokens", "r2"}: how much of
    the targets' variance the fitted linear map explains (1 = all)."""
    kind = model.cfg.connector.kind
    if kind not in FITTED_KINDS:
        raise ConfigError(f"model.connector.init=ctc: fits kinds {', '.join(FITTED_KINDS)}, not {kind}")
    if model.connector.reduce.kind is not None:
        raise ConfigError("model.connector.init=ctc: not with token reduction (connector.reduce)")
    was_training = model.training
    model.eval()
    x, y = _tokens_and_targets(model, head, loader, max_tokens)
    model.train(was_training)
    xa = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    gram = xa.T @ xa + ridge * len(x) * torch.eye(xa.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, xa.T @ y.double()).float()  # [d_in + 1, d_model]
    pred = xa.float() @ w
    r2 = 1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp(min=1e-12))
    layers = list(model.connector.body.proj)
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
