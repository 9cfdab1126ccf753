"""Connectors: registry, shapes and masks, token reduction, padding invariance for every kind."""

import pytest
import torch
import torch.nn as nn

from bridgeocr.config import ConnectorConfig
from bridgeocr.errors import ConfigError
from bridgeocr.models.connectors import CONNECTORS, build_connector, register_connector
from bridgeocr.models.connectors.cabstractor import masked_adaptive_pool
from bridgeocr.models.connectors.projectors import Projector

D_ENC, D_MODEL = 24, 32
SETTINGS = [
    dict(kind="linear"), dict(kind="linear_ln"), dict(kind="linear_gelu_ln"), dict(kind="mlp"),
    dict(kind="linear_ln", reduce="pool", reduce_k=4), dict(kind="linear_ln", reduce="concat", reduce_k=4),
    dict(kind="mlp", reduce="concat", reduce_k=3),
    dict(kind="qformer", num_queries=6, layers=2, heads=4),
    dict(kind="cabstractor", num_queries=5, layers=1),
]


def tokens(B, N, seed=0):
    return torch.randn(B, N, D_ENC, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_shapes_masks_and_padding_invariance(setting):
    torch.manual_seed(0)
    conn = build_connector(ConnectorConfig.of(**setting), D_ENC, D_MODEL).eval()
    x_alone = tokens(1, 9)
    m_alone = torch.ones(1, 9, dtype=torch.bool)
    # the same item in a batch with a wider one: its tail is masked junk
    x = torch.cat([torch.cat([x_alone, 100 * tokens(1, 7, seed=5)], 1), tokens(1, 16, seed=1)])
    m = torch.ones(2, 16, dtype=torch.bool)
    m[0, 9:] = False
    with torch.no_grad():
        a, am = conn(x_alone, m_alone)
        b, bm = conn(x, m)
    assert b.shape[0] == 2 and b.shape[2] == D_MODEL and bm.shape == b.shape[:2] and bm.dtype == torch.bool
    k = setting.get("reduce_k", 1)
    if setting["kind"] in ("qformer", "cabstractor"):
        assert b.shape[1] == setting["num_queries"] and bm.all()
    else:
        assert b.shape[1] == -(-16 // k) and int(bm[0].sum()) == -(-9 // k) and bm[1].all()
    n = int(am[0].sum())
    assert bool(bm[0, :n].all())
    torch.testing.assert_close(b[0, :n], a[0, :n], atol=1e-5, rtol=0)


def test_reduce_pool_is_masked_mean():
    conn = build_connector(ConnectorConfig(kind="linear", reduce="pool", reduce_k=2), D_ENC, D_MODEL)
    x = tokens(1, 3)
    m = torch.tensor([[True, True, True]])
    pooled, pm = conn.reduce(x, m)
    torch.testing.assert_close(pooled[0, 0], x[0, :2].mean(0))
    torch.testing.assert_close(pooled[0, 1], x[0, 2])  # the half-empty window averages its real token only
    assert pm.tolist() == [[True, True]]


def test_masked_adaptive_pool_matches_torch_on_real_tokens():
    x = tokens(1, 7)
    m = torch.ones(1, 10, dtype=torch.bool)
    m[0, 7:] = False
    xp = torch.cat([x, torch.randn(1, 3, D_ENC)], 1)
    for M in (3, 7, 10):
        ref = nn.functional.adaptive_avg_pool1d(x.transpose(1, 2), M).transpose(1, 2)
        torch.testing.assert_close(masked_adaptive_pool(xp, m, M), ref)


def test_unknown_kind_lists_known_ones():
    with pytest.raises(ConfigError, match="qformer") as err:
        build_connector(ConnectorConfig(kind="nope"), D_ENC, D_MODEL)
    assert "nope" in str(err.value) and "linear_gelu_ln" in str(err.value)
    with pytest.raises(ConfigError, match="reduce"):
        build_connector(ConnectorConfig(kind="linear", reduce="max", reduce_k=2), D_ENC, D_MODEL)


def test_register_connector():
    @register_connector("test_tanh")
    def _tanh(cfg, d_in, d_model):
        return Projector([nn.Linear(d_in, d_model), nn.Tanh()])

    try:
        conn = build_connector(ConnectorConfig(kind="test_tanh"), D_ENC, D_MODEL)
        out, _ = conn(tokens(2, 5), torch.ones(2, 5, dtype=torch.bool))
        assert out.abs().max() <= 1
    finally:
        CONNECTORS.pop("test_tanh")


def test_a_new_kind_with_its_own_settings_is_one_registration():
    """The kind's settings dataclass sits beside it: written flat in a config, checked by the kind, handed to
    its builder; the config file itself knows nothing of it."""
    from dataclasses import dataclass

    from bridgeocr.config import load_config
    from bridgeocr.models.connectors.registry import require

    @dataclass
    class Scaled:
        scale: float = 1.0

        def __post_init__(self):
            require("scale", self.scale > 0, "> 0", self.scale)

    seen = []

    @register_connector("test_scaled", settings=Scaled)
    def _scaled(settings, d_in, d_model):
        seen.append(settings)
        return Projector([nn.Linear(d_in, d_model)])

    try:
        cfg = load_config(None, ["model.connector.kind=test_scaled", "model.connector.scale=2.5"])
        assert cfg.model.connector.options == {"scale": 2.5}
        build_connector(cfg.model.connector, D_ENC, D_MODEL)
        assert seen == [Scaled(scale=2.5)]
        with pytest.raises(ConfigError, match=r"^config: model\.connector\.scale must be > 0, got -1\.0$"):
            load_config(None, ["model.connector.kind=test_scaled", "model.connector.scale=-1"])
    finally:
        CONNECTORS.pop("test_scaled")


@pytest.mark.parametrize("kind", ["ctc_embed", "ctc_collapse"])
def test_a_kind_that_reads_every_token_refuses_a_reduction(kind):
    with pytest.raises(ConfigError, match=f"connector {kind}: token reduction is not supported"):
        build_connector(ConnectorConfig(kind=kind, reduce="pool", reduce_k=2), D_ENC, D_MODEL)
    build_connector(ConnectorConfig(kind=kind, reduce="pool", reduce_k=1), D_ENC, D_MODEL)  # k=1: no reduction


def test_ctc_embed_writes_ctc_posteriors_in_the_gpt_embedding_space():
    from bridgeocr.models.ctc import CTCHead

    V, U = 6, 3
    head = CTCHead(D_ENC, V, upsample=U)
    wte = nn.Embedding(V, D_MODEL)
    conn = build_connector(ConnectorConfig(kind="ctc_embed"), D_ENC, D_MODEL)
    with pytest.raises(ConfigError, match="ctc_head"):
        conn(tokens(1, 2), torch.ones(1, 2, dtype=torch.bool))
    conn.body.init_from(head, wte)
    # token 0: frames (char 2, blank, blank) -> embedding of 2; token 1: all blank -> embedding 0 (blank);
    # token 2: frames (char 3, blank, char 4) -> mean of 3 and 4
    frames = torch.full((3, U), 0)
    frames[0, 0], frames[2, 0], frames[2, 2] = 2, 3, 4
    logits = torch.full((3, U, V), -30.0)
    logits.scatter_(2, frames[..., None], 30.0)
    conn.body.head = nn.Identity()  # feed the chosen posteriors straight through (d_enc = V * U below)
    conn.body.residual = nn.Linear(U * V, D_MODEL)
    nn.init.zeros_(conn.body.residual.weight)
    nn.init.zeros_(conn.body.residual.bias)
    out, mask = conn(logits.view(1, 3, U * V), torch.ones(1, 3, dtype=torch.bool))
    assert mask.all()
    assert torch.allclose(out[0, 0], wte.weight[2], atol=1e-5)
    assert torch.allclose(out[0, 1], wte.weight[0], atol=1e-5)
    assert torch.allclose(out[0, 2], (wte.weight[3] + wte.weight[4]) / 2, atol=1e-5)


def test_ctc_embed_inside_the_ocr_model_needs_the_ctc_head_and_round_trips(tmp_path):
    from bridgeocr.config import ModelConfig
    from bridgeocr.data.tokenizers import CharTokenizer
    from bridgeocr.models.ocr import OCRModel

    m = ModelConfig()
    m.encoder.dim, m.encoder.depth, m.encoder.heads = 32, 1, 2
    m.encoder.patch_height, m.encoder.patch_width, m.encoder.conv_stem = 16, 4, False
    m.decoder.n_layer, m.decoder.n_embd, m.decoder.n_head, m.decoder.n_positions = 1, 32, 2, 64
    m.connector.kind = "ctc_embed"
    tok = CharTokenizer.build(["abcd"])
    with pytest.raises(ConfigError, match="model.ctc_head=true"):
        OCRModel(m, tok.vocab_size, image_height=16, tokenizer=tok)
    m.ctc_head = True
    model = OCRModel(m, tok.vocab_size, image_height=16, tokenizer=tok).eval()
    # the connector starts as copies of the CTC head and the GPT embeddings, and owns them
    assert torch.equal(model.connector.body.head.weight, model.ctc_head.proj.weight)
    assert model.connector.body.head.weight.data_ptr() != model.ctc_head.proj.weight.data_ptr()
    model.save_pretrained(tmp_path / "m")
    again = OCRModel.from_pretrained(tmp_path / "m").eval()
    images, mask = torch.rand(2, 1, 16, 24), torch.ones(2, 1, 16, 24, dtype=torch.bool)
    mask[1, ..., 12:] = False
    a, _ = model.encode(images, mask[:, 0, 0])
    b, _ = again.encode(images, mask[:, 0, 0])
    assert torch.allclose(a, b)


def test_ctc_collapse_gives_one_token_per_character_read():
    from bridgeocr.models.ctc import CTCHead

    V, U = 6, 3
    conn = build_connector(ConnectorConfig(kind="ctc_collapse"), D_ENC, D_MODEL)
    wte = nn.Embedding(V, D_MODEL)
    conn.body.init_from(CTCHead(D_ENC, V, upsample=U), wte)
    conn.body.head = nn.Identity()
    conn.body.residual = nn.Linear(U * V, D_MODEL)
    nn.init.zeros_(conn.body.residual.weight)
    nn.init.zeros_(conn.body.residual.bias)
    # frames: (2, 2, _) (2, _, 3) (4, _, _): greedy CTC reads 2 2 3 4 (repeat 2 2 merged, blank splits)
    path = torch.tensor([[2, 2, 0, 2, 0, 3, 4, 0, 0]] * 2)
    logits = torch.full((2, 9, V), -30.0).scatter_(2, path[..., None], 30.0).view(2, 3, U * V)
    mask = torch.tensor([[True, True, True], [True, True, False]])  # row 2: its last token is padding
    out, out_mask = conn(logits, mask)
    assert out_mask.sum(1).tolist() == [4, 3]
    for i, char in enumerate([2, 2, 3, 4]):
        assert torch.allclose(out[0, i], wte.weight[char], atol=1e-5)
    assert torch.allclose(out[1, :3], out[0, :3], atol=1e-5) and torch.all(out[1, 3] == 0)
    blank = torch.full((1, 9, V), -30.0)
    blank[..., 0] = 30.0
    out, out_mask = conn(blank.view(1, 3, U * V), torch.ones(1, 3, dtype=torch.bool))
    assert out_mask.tolist() == [[True]] and torch.allclose(out[0, 0], wte.weight[0], atol=1e-5)


def test_a_connector_declares_what_it_needs_and_the_model_hands_it_over():
    """A new kind is one registered class: what it reads from the model (`needs`) arrives in `bind`; a need
    the model cannot meet is a one-line ConfigError, and a builder must return a ConnectorBody."""
    import torch.nn as nn

    from bridgeocr.config import ModelConfig
    from bridgeocr.errors import ConfigError
    from bridgeocr.models import connectors
    from bridgeocr.models.ocr import OCRModel

    class TiedReadout(connectors.ConnectorBody):
        needs = ("wte",)

        def __init__(self, cfg, d_in, d_model):
            super().__init__()
            self.proj, self.wte = nn.Linear(d_in, d_model), None

        def bind(self, wte):
            self.wte = wte

        def forward(self, x, mask):
            return self.proj(x), mask

    class Greedy(TiedReadout):
        needs = ("a_language_model",)

    connectors.register_connector("_tied_test")(TiedReadout)
    connectors.register_connector("_greedy_test")(Greedy)
    connectors.register_connector("_plain_module_test")(lambda settings, d_in, d_model: nn.Linear(d_in, d_model))
    try:
        cfg = ModelConfig()
        cfg.encoder.dim, cfg.encoder.depth, cfg.encoder.heads, cfg.decoder.n_layer = 32, 1, 2, 1
        cfg.decoder.n_embd, cfg.decoder.n_head, cfg.connector.kind = 32, 2, "_tied_test"
        model = OCRModel(cfg, 12, 32)
        assert model.connector.needs == ("wte",) and model.connector.body.wte is model.decoder.wte
        cfg.connector.kind = "_greedy_test"
        with pytest.raises(ConfigError, match="needs a_language_model"):
            OCRModel(cfg, 12, 32)
        cfg.connector.kind = "_plain_module_test"
        with pytest.raises(TypeError, match="ConnectorBody"):
            OCRModel(cfg, 12, 32)
    finally:
        for name in ("_tied_test", "_greedy_test", "_plain_module_test"):
            connectors.CONNECTORS.pop(name, None)
