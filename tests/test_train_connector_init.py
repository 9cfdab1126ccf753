"""model.connector.init=ctc: a token-wise connector fitted to the ctc_embed prefix before training."""

import pytest
import torch

from bridgeocr.config import ConnectorConfig, ImageConfig
from bridgeocr.data.preprocess import make_loader
from bridgeocr.data.sources import open_source
from bridgeocr.errors import ConfigError
from bridgeocr.models.connectors.ctc import CTCEmbed
from bridgeocr.models.connectors.reduce import Reduce
from bridgeocr.train.connector_init import fit_projector_to_ctc
from conftest import make_box_dataset, tiny_ocr_model


def _gap(model, loader) -> float:
    """Mean squared distance between the connector's output and the ctc_embed prefix on real tokens."""
    target = CTCEmbed(None, model.encoder.d_out, model.decoder.n_embd)
    target.init_from(model.ctc_head, model.decoder.wte)
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            tokens, mask = model.encoder_tokens(batch.images, batch.image_mask)
            out, out_mask = model.connector(tokens, mask)
            y, _ = Reduce("pool" if model.connector.reduce.kind else None, model.connector.reduce.k,
                          model.decoder.n_embd)(*target(tokens, mask))
            total += float(((out - y) ** 2)[out_mask].sum())
            n += int(out_mask.sum())
    return total / n


@pytest.mark.parametrize("kind", ["linear", "linear_gelu_ln", "mlp", "linear_ln+pool", "linear_ln+concat"])
def test_fit_brings_the_connector_to_the_ctc_prefix(tmp_path, kind):
    from bridgeocr.models.connectors import build_connector

    model = tiny_ocr_model(ctc=True).eval()
    kind, _, reduce = kind.partition("+")
    cfg = ConnectorConfig(kind=kind, reduce=reduce or None, reduce_k=2 if reduce else 1)
    model.cfg.connector = cfg
    model.connector = build_connector(cfg, model.encoder.d_out, model.decoder.n_embd)
    src = list(open_source(make_box_dataset(tmp_path / "d", n=12), "train"))
    loader = make_loader(src, ImageConfig(height=16, width_multiple=4), model.tokenizer, 4, shuffle=False)
    before = _gap(model, loader)
    fit = fit_projector_to_ctc(model, model.ctc_head, loader)
    after = _gap(model, loader)
    assert fit["tokens"] > 0 and 0.0 < fit["r2"] <= 1.0
    assert after < 0.5 * before


def test_kinds_it_cannot_fit_are_a_config_error(tmp_path):
    from bridgeocr.models.connectors import build_connector

    model = tiny_ocr_model(ctc=True)
    for cfg in (ConnectorConfig.of("cabstractor", num_queries=4, layers=1), ConnectorConfig.of("qformer",
                                                                                          num_queries=4, heads=2)):
        model.cfg.connector = cfg
        model.connector = build_connector(cfg, model.encoder.d_out, model.decoder.n_embd)
        src = list(open_source(make_box_dataset(tmp_path / cfg.kind, n=8), "train"))
        loader = make_loader(src, ImageConfig(height=16, width_multiple=4), model.tokenizer, 4, shuffle=False)
        with pytest.raises(ConfigError, match="cabstractor" if cfg.kind == "cabstractor" else "locality"):
            fit_projector_to_ctc(model, model.ctc_head, loader)


def test_a_qformer_with_locality_starts_as_the_positional_average_of_the_fitted_prefix(tmp_path):
    from bridgeocr.models.connectors import build_connector

    model = tiny_ocr_model(ctc=True).eval()
    cfg = ConnectorConfig.of("qformer", num_queries=4, heads=2, layers=2, locality=0.1)
    model.cfg.connector = cfg
    model.connector = build_connector(cfg, model.encoder.d_out, model.decoder.n_embd)
    src = list(open_source(make_box_dataset(tmp_path / "d", n=8), "train"))
    loader = make_loader(src, ImageConfig(height=16, width_multiple=4), model.tokenizer, 4, shuffle=False)
    fit = fit_projector_to_ctc(model, model.ctc_head, loader)
    body = model.connector.body
    assert 0 < fit["r2"] <= 1 and not body.blocks[0].cross_attn.k.weight.any()
    assert not body.blocks[1].cross_attn.o.weight.any() and not body.blocks[0].ffn[2].weight.any()
    batch = next(iter(loader))
    with torch.no_grad():  # the queries' outputs differ along the line: each reads its own share
        out, _ = model.connector(*model.encoder_tokens(batch.images, batch.image_mask))
    assert (out[:, 0] - out[:, -1]).abs().max() > 1e-3
