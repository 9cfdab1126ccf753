"""ONNX executor and the PP-OCR encoder: parity with onnxruntime, gradients, padding invariance, save/load,
the CTC head mapped onto our vocabulary; on a tiny PP-OCR-shaped graph built here and, when the rapidocr
wheel is installed, on the real PP-OCRv6 recogniser."""

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bridgeocr.data.tokenizers import CharTokenizer  # noqa: E402
from bridgeocr.errors import ConfigError  # noqa: E402
from bridgeocr.models.encoder import load_encoder, save_encoder  # noqa: E402
from bridgeocr.models.onnx_graph import OnnxGraph, prune_spec, spec_from_onnx  # noqa: E402
from bridgeocr.models.ppocr import import_ppocr, rapidocr_onnx_path  # noqa: E402

CHARS = list("abc xyz")  # the tiny graph's character table (+ blank in front, + space at the end)


def _tiny_ppocr_onnx(path, d=8, seed=0, mlps=0, silent_mlps=False):
    """A PP-OCR-shaped recogniser: conv/BN/hardswish/maxpool backbone with an SE block, `mlps` residual MLPs
    x + conv1x1(relu(conv1x1(x))) (`silent_mlps`: their last conv all zeros), avg-pool to one row, flatten via
    Shape/Slice/Concat/Reshape, a LayerNorm + global self-attention + GELU(erf) neck, and a CTC classifier
    softmax(features @ W + b) over blank + CHARS + space."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def f32(name, *shape, scale=0.3):
        return const(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    x = node("Conv", ["x", f32("c1.w", d, 3, 3, 3), f32("c1.b", d)], "c1", strides=[2, 2], auto_pad="SAME_UPPER",
             kernel_shape=[3, 3])
    bn = node("BatchNormalization", [x, f32("bn.s", d), f32("bn.b", d), f32("bn.m", d),
                                     const("bn.v", rng.uniform(0.5, 1.5, d).astype(np.float32))], "bn", epsilon=1e-5)
    hs = node("HardSigmoid", [bn], "hs", alpha=1 / 6, beta=0.5)
    x = node("Mul", [bn, hs], "hswish")
    x = node("MaxPool", [x], "mp", kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_UPPER")
    x = node("Conv", [x, f32("c2.w", d, 1, 3, 3), f32("c2.b", d)], "c2", strides=[2, 2], pads=[1, 1, 1, 1],
             group=d, kernel_shape=[3, 3])
    x = node("Relu", [x], "r2")
    se = node("ReduceMean", [x], "se_mean", axes=[2, 3], keepdims=1)
    se = node("Conv", [se, f32("se.w", d, d, 1, 1), f32("se.b", d)], "se_fc", kernel_shape=[1, 1])
    se = node("Sigmoid", [se], "se_sig")
    x = node("Mul", [x, se], "se_out")
    x = node("Conv", [x, f32("c3.w", d, d, 3, 3), f32("c3.b", d)], "c3", strides=[2, 1], auto_pad="SAME_UPPER",
             kernel_shape=[3, 3])  # [B, d, 6, W/4]
    for k in range(mlps):
        h = node("Conv", [x, f32(f"m{k}.w1", 2 * d, d, 1, 1), f32(f"m{k}.b1", 2 * d)], f"m{k}.up", kernel_shape=[1, 1])
        h = node("Relu", [h], f"m{k}.act")
        w2, b2 = (const(f"m{k}.w2", np.zeros((d, 2 * d, 1, 1), np.float32)), const(f"m{k}.b2", np.zeros(d, np.float32))
                  ) if silent_mlps else (f32(f"m{k}.w2", d, 2 * d, 1, 1), f32(f"m{k}.b2", d))
        h = node("Conv", [h, w2, b2], f"m{k}.down", kernel_shape=[1, 1])
        x = node("Add", [x, h], f"m{k}.res")
    x = node("AveragePool", [x], "ap", kernel_shape=[6, 2], strides=[6, 2], pads=[0, 0, 0, 0])  # [B, d, 1, W/8]
    shape = node("Shape", [x], "shape")
    head = node("Slice", [shape, const("s0", np.array([0])), const("s2", np.array([2])),
                          const("sax", np.array([0]))], "shape_head")
    flat = node("Concat", [head, const("minus1", np.array([-1]))], "flat_shape", axis=0)
    x = node("Reshape", [x, flat], "flat")  # [B, d, W/8]
    x = node("Transpose", [x], "seq", perm=[0, 2, 1])  # [B, N, d]
    mean = node("ReduceMean", [x], "ln_mean", axes=[-1])
    cen = node("Sub", [x, mean], "ln_c")
    var = node("ReduceMean", [node("Pow", [cen, const("two", np.float32(2.0))], "ln_sq")], "ln_var", axes=[-1])
    std = node("Sqrt", [node("Add", [var, const("eps", np.float32(1e-5))], "ln_ve")], "ln_std")
    ln = node("Add", [node("Mul", [node("Div", [cen, std], "ln_n"), f32("ln.g", d)], "ln_g"), f32("ln.b", d)], "ln")
    q = node("MatMul", [ln, f32("q.w", d, d)], "q")
    k = node("Transpose", [node("MatMul", [ln, f32("k.w", d, d)], "k0")], "k", perm=[0, 2, 1])
    att = node("Softmax", [node("MatMul", [q, k], "qk")], "att", axis=2)
    x = node("Add", [x, node("MatMul", [att, ln], "av")], "res")
    g = node("Erf", [node("Div", [x, const("sqrt2", np.float32(np.sqrt(2.0)))], "g_div")], "g_erf")
    g = node("Mul", [node("Mul", [x, node("Add", [g, const("one", np.float32(1.0))], "g_1")], "g_x"),
                     const("half", np.float32(0.5))], "gelu")
    feats = node("Identity", [g], "features")
    logits = node("Add", [node("MatMul", [feats, f32("fc.w", d, len(CHARS) + 1, scale=1.0)], "fc"),
                          f32("fc.b", len(CHARS) + 1)], "logits")
    node("Softmax", [logits], "probs", axis=2)
    graph = helper.make_graph(nodes, "tiny_ppocr",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 48, "W"])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    helper.set_model_props(model, {"character": "\n".join(CHARS[:3] + CHARS[4:])})  # space is appended
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path):
    return _tiny_ppocr_onnx(tmp_path / "tiny.onnx")


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("width", [40, 96, 333])
def test_executor_matches_onnxruntime(tiny_onnx, width):
    spec, inits, _ = spec_from_onnx(tiny_onnx)
    graph = OnnxGraph(spec, inits).eval()
    x = np.random.default_rng(width).uniform(-1, 1, (2, 3, 48, width)).astype(np.float32)
    ref = _ort(tiny_onnx, x)
    with torch.no_grad():
        out = graph(torch.from_numpy(x)).numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-3


def test_gradients_reach_every_parameter(tiny_onnx):
    spec, inits, _ = spec_from_onnx(tiny_onnx)
    graph = OnnxGraph(spec, inits)
    assert "bn_m" not in graph.params and "bn_s" in graph.params  # BN statistics are buffers, scale trainable
    graph(torch.rand(2, 3, 48, 64)).log().sum().backward()
    missing = [k for k, p in graph.params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing and len(graph.params) > 10


def test_export_back_to_onnx_runs_the_current_weights_in_onnxruntime(tiny_onnx, monkeypatch):
    """A frozen / evaluated encoder runs on onnxruntime (its fast path), a trained one on the torch executor."""
    encoder = import_ppocr(tiny_onnx)[0].eval()
    images, mask = torch.rand(3, 1, 48, 96), torch.ones(3, 96, dtype=torch.bool)
    mask[1, 50:] = False
    with torch.no_grad():
        monkeypatch.setenv("BRIDGEOCR_ORT", "0")
        torch_out = encoder(images, mask)[0]
        monkeypatch.setenv("BRIDGEOCR_ORT", "1")
        ort_out = encoder(images, mask)[0]
        assert encoder._ort.sessions  # it did run on onnxruntime
        # its threads do not busy-wait after a call: the torch side runs next on the same cores
        for session in encoder._ort.sessions.values():
            assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        torch.testing.assert_close(ort_out, torch_out, atol=1e-4, rtol=1e-4)
        next(iter(encoder.graph.params.values())).mul_(0.5)  # new weights: a new session, new numbers
        changed = encoder(images, mask)[0]
        monkeypatch.setenv("BRIDGEOCR_ORT", "0")
        torch.testing.assert_close(changed, encoder(images, mask)[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(changed, ort_out, atol=1e-3)
    monkeypatch.setenv("BRIDGEOCR_ORT", "1")
    encoder._ort.sessions = {}
    encoder(images, mask)[0].sum().backward()  # trainable: the torch executor, gradients flow
    assert not encoder._ort.sessions and all(p.grad is not None for p in encoder.graph.params.values())


def test_width_groups_run_side_by_side_with_the_same_result(tiny_onnx):
    """OrtRunner.run_many: several inputs on single-threaded calls in as many workers as torch has threads,
    each output the one a call of its own gives, in input order."""
    encoder = import_ppocr(tiny_onnx)[0].eval()
    runner = encoder._ort
    xs = [torch.rand(1, 3, 48, w) for w in (64, 160, 96, 32)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        many = runner.run_many(xs)
        assert set(runner.sessions) == {1} and runner._workers == 2  # one single-threaded session, 2 workers
        alone = [runner(x) for x in xs]
        assert 2 in runner.sessions
        for a, b in zip(many, alone):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.set_num_threads(1)
        for a, b in zip(runner.run_many(xs), alone):  # one thread: one call after another, same outputs
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_a_replacement_model_runs_while_the_block_lasts(tiny_onnx):
    """OrtRunner.replaced_by: another serialised model (a benchmark's quantised copy) answers inside the
    block, with its own sessions; after it, the graph's own sessions and numbers come back."""
    encoder = import_ppocr(tiny_onnx)[0].eval()
    runner, x = encoder._ort, torch.rand(1, 3, 48, 64)
    own = runner(x)
    own_sessions = dict(runner.sessions)
    other = import_ppocr(_tiny_ppocr_onnx(tiny_onnx.parent / "other.onnx", seed=1))[0].graph
    with runner.replaced_by(other.to_onnx().SerializeToString()):
        replaced = runner(x)
        assert all(s not in own_sessions.values() for s in runner.sessions.values())
    with torch.no_grad():
        torch.testing.assert_close(replaced, other(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(replaced, own, atol=1e-3)
    assert runner.sessions == own_sessions
    torch.testing.assert_close(runner(x), own)


def test_erf_gelu_is_fused_into_one_node(tiny_onnx):
    spec, _, _ = spec_from_onnx(tiny_onnx)
    ops = [n["op"] for n in spec["nodes"]]
    assert ops.count("Gelu") == 1 and "Erf" not in ops  # parity above covers its numbers


def test_unknown_op_is_a_config_error(tiny_onnx):
    spec, inits, _ = spec_from_onnx(tiny_onnx)
    spec["nodes"][0] = {**spec["nodes"][0], "op": "FancyConv"}
    with pytest.raises(ConfigError, match="FancyConv"):
        OnnxGraph(spec, inits)


def test_prune_keeps_only_what_the_output_needs(tiny_onnx):
    spec, inits, _ = spec_from_onnx(tiny_onnx)
    trunk = prune_spec(spec, ["features"])
    outputs = {n["outputs"][0] for n in trunk["nodes"]}
    assert "features" in outputs and outputs.isdisjoint({"fc", "logits", "probs"})
    assert len(trunk["nodes"]) == len(spec["nodes"]) - 3  # MatMul, Add, Softmax
    with pytest.raises(ConfigError, match="no tensor"):
        prune_spec(spec, ["nope"])


def _tokenizer():
    return CharTokenizer(list("abcxyz Q"))  # Q is unknown to the tiny PP-OCR table


def test_import_maps_the_ctc_head_and_reads_like_the_onnx_model(tiny_onnx):
    tok = _tokenizer()
    encoder, head, info = import_ppocr(tiny_onnx, tok)
    assert info["kept"] == 1 + 7 and info["new"] == ["Q"]  # blank + a b c x y z + space
    encoder.eval()
    width = 120
    ink = torch.rand(1, 1, 48, width)
    x = (1.0 - 2.0 * ink).expand(-1, 3, -1, -1).numpy()  # the network's own normalisation: paper white = 1
    probs = _ort(tiny_onnx, x)[0]  # [N, 8]: blank, a, b, c, x, y, z, ' '
    with torch.no_grad():
        tokens, mask = encoder(ink, torch.ones(1, width, dtype=torch.bool))
        logits = head(tokens)[0]
    assert mask.all() and tokens.shape[1] == width // 8 == probs.shape[0]
    classes = ["<blank>"] + list("abcxyz") + [" "]
    ours = logits.log_softmax(-1)
    for ch, src in (("a", 1), ("z", 6), (" ", 7)):
        tid = tok.encode(ch)[0]
        # same ranking of the classes PP-OCR knows: our log-probs differ from its by one constant per frame
        diff = ours[:, tid] - torch.from_numpy(np.log(probs[:, src]))
        assert classes[src] == ch and torch.allclose(diff, diff[0].expand_as(diff), atol=1e-3)
    assert (ours[:, tok.encode("Q")[0]] < ours[:, 0] - 3).all()  # new characters start silent


def test_padding_never_changes_an_items_tokens(tiny_onnx):
    encoder = import_ppocr(tiny_onnx)[0].eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 1, 48, 64, generator=g), torch.rand(1, 1, 48, 200, generator=g)
    with torch.no_grad():
        alone, mask_alone = encoder(a, torch.ones(1, 64, dtype=torch.bool))
        images = torch.zeros(2, 1, 48, 208)
        images[0, :, :, :64], images[1, :, :, :200] = a[0], b[0]
        mask = torch.zeros(2, 208, dtype=torch.bool)
        mask[0, :64], mask[1, :200] = True, True
        images[0, :, :, 64:] = 0.7  # garbage in the padding must not leak in either
        both, mask_both = encoder(images, mask)
    assert mask_both[0].sum() == 8 and mask_both[1].sum() == 25
    assert torch.allclose(both[0, :8], alone[0], atol=1e-5)
    assert (both[0, 8:] == 0).all()


def test_save_load_round_trip_needs_no_onnx_file(tiny_onnx, tmp_path):
    tok = _tokenizer()
    encoder, head, _ = import_ppocr(tiny_onnx, tok)
    save_encoder(tmp_path / "enc", encoder, head)
    tiny_onnx.unlink()  # the directory describes itself
    loaded, loaded_head = load_encoder(tmp_path / "enc", 48)
    x, m = torch.rand(2, 1, 48, 80), torch.ones(2, 80, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(encoder.eval()(x, m)[0], loaded.eval()(x, m)[0])
        assert torch.equal(head(encoder(x, m)[0]), loaded_head(loaded(x, m)[0]))
    assert loaded.image["height"] == 48 and loaded.image["channels"] == 3
    with pytest.raises(ConfigError, match="data.image.height=48"):
        load_encoder(tmp_path / "enc", 32)


def test_encoder_dir_reads_with_evaluate_and_recognize(tiny_onnx, tmp_path):
    from PIL import Image

    from bridgeocr.api import BridgeOCR

    tok = _tokenizer()
    encoder, head, _ = import_ppocr(tiny_onnx, tok)
    save_encoder(tmp_path / "enc", encoder, head)
    tok.save(tmp_path / "enc" / "tokenizer.json")
    ocr = BridgeOCR.from_pretrained(tmp_path / "enc")
    assert ocr.image_cfg.height == 48
    out = ocr.recognize([Image.new("L", (90, 30), 255), Image.new("L", (40, 30), 255)])
    assert len(out) == 2 and all(isinstance(r.text, str) for r in out)
    with pytest.raises(ConfigError, match="CTC head only"):
        ocr.recognize(Image.new("L", (90, 30), 255), decoding="gpt")


def test_a_recorded_width_scale_is_how_an_encoder_dir_and_an_ocr_model_read(tiny_onnx, tmp_path):
    from bridgeocr.config import ExperimentConfig, ImageConfig
    from bridgeocr.models.encoder import adopt_encoder_image
    from bridgeocr.models.load import load_checkpoint
    from conftest import load_script, tiny_ocr_model

    set_scale = load_script("scripts/set_width_scale.py").set_scale
    tok = _tokenizer()
    encoder, head, _ = import_ppocr(tiny_onnx, tok)
    save_encoder(tmp_path / "enc", encoder, head)
    tok.save(tmp_path / "enc" / "tokenizer.json")
    assert load_checkpoint(tmp_path / "enc")[1].width_scale == 1.0
    set_scale(tmp_path / "enc", 1.25)
    assert load_checkpoint(tmp_path / "enc")[1].width_scale == 1.25
    cfg = ExperimentConfig()  # training on that encoder reads its lines the same way
    cfg.model.encoder.kind, cfg.model.encoder.pretrained = "ppocr", str(tmp_path / "enc")
    adopt_encoder_image(cfg)
    assert cfg.data.image.width_scale == 1.25 and cfg.data.image.height == 48
    model = tiny_ocr_model(ctc=True)
    model.save_pretrained(tmp_path / "ocr")
    set_scale(tmp_path / "ocr", 1.5)
    _, image_cfg, _ = load_checkpoint(tmp_path / "ocr")
    assert image_cfg.width_scale == 1.5 and image_cfg.height == model.image_height
    # the rest as the loader would have read the model before (models/load.reading_image_config)
    assert image_cfg.width_multiple == model.cfg.encoder.patch_width != ImageConfig().width_multiple


def _real_onnx():
    try:
        return rapidocr_onnx_path()
    except ConfigError as exc:
        pytest.skip(f"rapidocr wheel not installed: {exc}")


@pytest.mark.parametrize("width", [64, 320, 1200])
def test_real_ppocrv6_matches_onnxruntime(width):
    path = _real_onnx()
    spec, inits, _ = spec_from_onnx(path)
    graph = OnnxGraph(spec, inits).eval()
    x = np.random.default_rng(width).uniform(-1, 1, (1, 3, 48, width)).astype(np.float32)
    with torch.no_grad():
        out = graph(torch.from_numpy(x)).numpy()
    assert np.abs(out - _ort(path, x)).max() < 1e-3


def test_real_ppocrv6_encoder_gradients_and_padding():
    path = _real_onnx()
    encoder = import_ppocr(path)[0]
    x = torch.rand(2, 1, 48, 96)
    mask = torch.ones(2, 96, dtype=torch.bool)
    mask[1, 40:] = False
    tokens, tmask = encoder(x, mask)
    assert tokens.shape == (2, 12, 120) and tmask.sum(1).tolist() == [12, 5]
    (tokens * tmask[..., None]).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    with torch.no_grad():
        alone = encoder.eval()(x[1:, :, :, :40], mask[1:, :40])[0]
        assert torch.allclose(encoder(x, mask)[0][1, :5], alone[0], atol=1e-4)


def test_import_finetune_and_train_an_ocr_model_on_it(tiny_onnx, tmp_path, capsys):
    """`encoder import` -> `encoder train --init` (augmented, at the encoder's own 48 px) -> `train` with it
    -> `evaluate` of the OCR model and of the encoder directory alone."""
    from bridgeocr.cli import main
    from conftest import BOX_WORDS, make_box_dataset

    src = make_box_dataset(tmp_path / "data", n=12)
    tok = CharTokenizer(sorted(set("".join(BOX_WORDS)) | {" "}))
    tok.save(tmp_path / "tok.json")
    enc = tmp_path / "enc"
    assert main(["encoder", "import", "--onnx", str(tiny_onnx), "--tokenizer", str(tmp_path / "tok.json"),
                 "--out", str(enc)]) == 0
    assert main(["evaluate", "--checkpoint", str(enc), "--data", str(src), "--split", "test"]) == 0
    ft = tmp_path / "ft"
    assert main(["encoder", "train", "--init", str(enc), "--augment", "print", "--data", str(src),
                 "--out", str(ft), "--steps", "2", "--batch-size", "4", "--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "data.image.height=48 (was 32)" in out
    card = json.loads((ft / "encoder_card.json").read_text())
    assert card["image"]["height"] == 48 and card["init"] == str(enc)
    cfg = tmp_path / "ocr.yaml"
    cfg.write_text(f"""
data: {{source: {src}}}
model:
  encoder: {{pretrained: {ft}}}
  connector: {{kind: ctc_collapse}}
  ctc_head: true
  decoder: {{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 96}}
  max_text_tokens: 20
tokenizer: {{path: {ft / "tokenizer.json"}}}
optim: {{batch_size: 4, max_steps: 2, warmup_steps: 1}}
train: {{name: pp, out_dir: {tmp_path / "runs"}, accelerator: cpu}}
""")
    assert main(["train", "--config", str(cfg)]) == 0
    best = tmp_path / "runs" / "pp" / "best"
    meta = json.loads((best / "config.json").read_text())
    assert meta["image_height"] == 48 and meta["encoder"]["kind"] == "ppocr"
    assert meta["encoder"]["image"]["channels"] == 3  # the checkpoint knows how to preprocess its input
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(src), "--split", "test", "--ctc"]) == 0


def test_ocr_model_with_kind_ppocr_maps_the_head_and_round_trips(tiny_onnx, tmp_path):
    from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
    from bridgeocr.models.ocr import OCRModel

    tok = _tokenizer()
    cfg = ModelConfig(encoder=EncoderConfig(kind="ppocr", onnx=str(tiny_onnx)), ctc_head=True,
                      connector=ConnectorConfig(kind="ctc_collapse"),
                      decoder=DecoderConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    model = OCRModel(cfg, tok.vocab_size, image_height=48, tokenizer=tok).eval()
    assert model.cfg.ctc_upsample == 1 and model.encoder.d_out == 8
    model.save_pretrained(tmp_path / "m")
    again = OCRModel.from_pretrained(tmp_path / "m").eval()
    x, m = torch.rand(1, 1, 48, 64), torch.ones(1, 64, dtype=torch.bool)
    assert [h.text for h in model.read(x, m, decoding="ctc")] == [h.text for h in again.read(x, m, decoding="ctc")]
    with pytest.raises(ConfigError, match="data.image.height=48"):
        OCRModel(cfg, tok.vocab_size, image_height=32, tokenizer=tok)



def test_a_forked_process_makes_its_own_sessions_and_workers(tiny_onnx, monkeypatch):
    """onnxruntime's threads and the width-group workers belong to the process that made them: in a forked
    process (another pid) OrtRunner makes new ones instead of waiting forever on its parent's."""
    import os

    encoder = import_ppocr(tiny_onnx)[0].eval()
    runner = encoder._ort
    xs = [torch.rand(1, 3, 48, w) for w in (64, 96)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = runner.run_many(xs)
        pool, session = runner._pool, runner.sessions[1]
        real = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: real + 1)  # as a forked child sees it
        again = runner.run_many(xs)
        assert runner._pool is not pool and runner.sessions[1] is not session
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_read_at_height_keeps_the_width_and_resizes_the_pool_over_the_rows(tiny_onnx, tmp_path):
    """A 32 px line through the 48 px graph: the rows the trunk leaves (4 here, 6 at 48 px) fold into one token
    row, torch and onnxruntime agree, a line keeps its frames (width scale x 1.5), and the directory the script
    writes reads that way after loading; a height too small to leave a row is refused."""
    from bridgeocr.models.load import load_checkpoint
    from bridgeocr.models.ppocr import read_at_height
    from conftest import load_script

    encoder, head, _ = import_ppocr(tiny_onnx, _tokenizer())
    read_at_height(encoder, 32)
    pool = [n for n in encoder.graph.spec["nodes"] if n["op"] == "AveragePool"][0]
    assert pool["attrs"]["kernel_shape"] == [4, 2] and pool["attrs"]["strides"] == [4, 2]
    assert encoder.image_height == 32 and encoder.image["width_scale"] == pytest.approx(1.5)
    images, mask = torch.rand(2, 1, 32, 96), torch.ones(2, 96, dtype=torch.bool)
    with torch.no_grad():
        tokens, tmask = encoder(images, mask)
        x = encoder.pixels(images)
        assert torch.allclose(encoder.graph(x), encoder._ort(x), atol=1e-4)
    assert tokens.shape[:2] == (2, 96 // 8) and tmask.all()
    with pytest.raises(ValueError, match="height 48"):  # it reads 32 px lines now
        encoder(torch.rand(1, 1, 48, 96), torch.ones(1, 96, dtype=torch.bool))

    save_encoder(tmp_path / "enc", *import_ppocr(tiny_onnx, _tokenizer())[:2])
    _tokenizer().save(tmp_path / "enc" / "tokenizer.json")
    load_script("scripts/read_at_height.py").main([str(tmp_path / "enc"), str(tmp_path / "enc32"), "--height", "32"])
    reader, image_cfg, _ = load_checkpoint(tmp_path / "enc32")
    assert image_cfg.height == 32 and image_cfg.width_scale == pytest.approx(1.5)
    with torch.no_grad():
        assert torch.allclose(reader.encoder(images, mask)[0], tokens, atol=1e-5)
    with pytest.raises(ConfigError, match="rows"):
        read_at_height(encoder, 4)


def test_an_ocr_model_reads_at_another_height_with_an_encoder_fine_tuned_there(tiny_onnx, tmp_path):
    """scripts/read_at_height.py on an OCR model directory: the model reads 32 px lines, as wide as before,
    with the encoder and CTC head of `--weights` (an encoder directory at that height)."""
    from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
    from bridgeocr.models.load import load_checkpoint
    from bridgeocr.models.ocr import OCRModel
    from bridgeocr.models.ppocr import read_at_height
    from conftest import load_script

    tok = _tokenizer()
    cfg = ModelConfig(encoder=EncoderConfig(kind="ppocr", onnx=str(tiny_onnx)), ctc_head=True,
                      connector=ConnectorConfig(kind="ctc_collapse"),
                      decoder=DecoderConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    OCRModel(cfg, tok.vocab_size, image_height=48, tokenizer=tok).save_pretrained(tmp_path / "m")
    tok_file = tmp_path / "m" / "tokenizer.json"  # laid out as no save writes it: it must come through as it is
    tok_file.write_text(json.dumps(json.loads(tok_file.read_text()), indent=1))
    encoder, head, _ = import_ppocr(tiny_onnx, tok)
    read_at_height(encoder, 32)
    with torch.no_grad():  # "fine-tuned": weights the model did not have
        for p in (*encoder.parameters(), *head.parameters()):
            p.add_(0.01)
    save_encoder(tmp_path / "enc32", encoder, head)
    script = load_script("scripts/read_at_height.py")
    script.main([str(tmp_path / "m"), str(tmp_path / "m32"), "--height", "32", "--weights", str(tmp_path / "enc32")])
    model, image_cfg, _ = load_checkpoint(tmp_path / "m32")
    assert image_cfg.height == model.image_height == 32 and image_cfg.width_scale == pytest.approx(1.5)
    assert sorted(f.name for f in (tmp_path / "m32").glob("*token*")) == sorted(
        f.name for f in (tmp_path / "m").glob("*token*"))  # the source's tokenizer files, as they were
    assert (tmp_path / "m32" / "tokenizer.json").read_bytes() == (tmp_path / "m" / "tokenizer.json").read_bytes()
    for a, b in zip(model.encoder.parameters(), encoder.parameters()):
        assert torch.equal(a, b)
    x, m = torch.rand(1, 1, 32, 64), torch.ones(1, 64, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model.ctc_head(model.encoder(x, m)[0]), head(encoder(x, m)[0]), atol=1e-5)
    assert len(model.read(x, m)) == 1
    with pytest.raises(SystemExit, match="reads 32 px lines, not 40"):
        script.main([str(tmp_path / "m"), str(tmp_path / "m40"), "--height", "40", "--weights", str(tmp_path / "enc32")])


def test_halving_the_columns_earlier_keeps_one_token_per_8_px(tiny_onnx, tmp_path):
    """halve_columns_at: the stage's row-halving conv halves the columns too and the last pool no longer does;
    a line keeps its tokens (one per 8 px), torch and onnxruntime agree, the features differ from before (the
    deep layers see every other column), the script's directory reads the same after loading, and a stage the
    graph lacks, a second halving, or weights of another structure are refused."""
    from bridgeocr.models.load import load_checkpoint
    from bridgeocr.models.ppocr import halve_columns_at
    from conftest import load_script

    encoder, head, _ = import_ppocr(tiny_onnx, _tokenizer())
    images, mask = torch.rand(2, 1, 48, 96), torch.ones(2, 96, dtype=torch.bool)
    with torch.no_grad():
        before = encoder(images, mask)[0]
    halve_columns_at(encoder, 1)
    nodes = encoder.graph.spec["nodes"]
    strided = [n for n in nodes if n["op"] == "Conv" and n["attrs"].get("strides") == [2, 2]]
    assert len(strided) == 3  # the stem's two, and the stage entry that halved only the rows
    pool = [n for n in nodes if n["op"] == "AveragePool"][0]
    assert pool["attrs"]["kernel_shape"] == [6, 1] and pool["attrs"]["strides"] == [6, 1]
    with torch.no_grad():
        tokens, tmask = encoder(images, mask)
        x = encoder.pixels(images)
        assert torch.allclose(encoder.graph(x), encoder._ort(x), atol=1e-4)
    assert tokens.shape == before.shape and tmask.all()
    assert not torch.allclose(tokens, before, atol=1e-3)
    with pytest.raises(ConfigError, match="halved earlier"):
        halve_columns_at(encoder, 1)
    with pytest.raises(ConfigError, match="no stage 2; 1 later"):
        halve_columns_at(import_ppocr(tiny_onnx, _tokenizer())[0], 2)

    save_encoder(tmp_path / "enc", *import_ppocr(tiny_onnx, _tokenizer())[:2])
    _tokenizer().save(tmp_path / "enc" / "tokenizer.json")
    script = load_script("scripts/read_at_height.py")
    script.main([str(tmp_path / "enc"), str(tmp_path / "half"), "--halve-columns-at", "1"])
    reader, image_cfg, _ = load_checkpoint(tmp_path / "half")
    assert image_cfg.height == 48 and reader.encoder.image_height == 48
    with torch.no_grad():
        assert torch.allclose(reader.encoder(images, mask)[0], tokens, atol=1e-5)
    with pytest.raises(SystemExit):  # nothing to change
        script.main([str(tmp_path / "enc"), str(tmp_path / "none")])


def test_an_ocr_model_takes_only_weights_of_its_own_structure(tiny_onnx, tmp_path):
    """scripts/read_at_height.py --halve-columns-at on an OCR model directory takes `--weights` of an encoder
    halved the same way, and refuses an encoder whose strides differ."""
    from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
    from bridgeocr.models.load import load_checkpoint
    from bridgeocr.models.ocr import OCRModel
    from bridgeocr.models.ppocr import halve_columns_at
    from conftest import load_script

    tok = _tokenizer()
    cfg = ModelConfig(encoder=EncoderConfig(kind="ppocr", onnx=str(tiny_onnx)), ctc_head=True,
                      connector=ConnectorConfig(kind="ctc_collapse"),
                      decoder=DecoderConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    OCRModel(cfg, tok.vocab_size, image_height=48, tokenizer=tok).save_pretrained(tmp_path / "m")
    plain, head, _ = import_ppocr(tiny_onnx, tok)
    save_encoder(tmp_path / "plain", plain, head)
    halved = halve_columns_at(import_ppocr(tiny_onnx, tok)[0], 1)
    with torch.no_grad():
        for p in halved.parameters():
            p.add_(0.01)
    save_encoder(tmp_path / "halved", halved, head)
    script = load_script("scripts/read_at_height.py")
    with pytest.raises(SystemExit, match="pools and strides differ"):
        script.main([str(tmp_path / "m"), str(tmp_path / "bad"), "--halve-columns-at", "1",
                     "--weights", str(tmp_path / "plain")])
    script.main([str(tmp_path / "m"), str(tmp_path / "m2"), "--halve-columns-at", "1",
                 "--weights", str(tmp_path / "halved")])
    model, image_cfg, _ = load_checkpoint(tmp_path / "m2")
    x, m = torch.rand(1, 1, 48, 64), torch.ones(1, 64, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x, m)[0], halved(x, m)[0], atol=1e-5)
    assert len(model.read(x, m)) == 1


def test_a_halved_encoder_learns_from_its_teacher(tiny_onnx, tmp_path, capsys):
    """`encoder train --teacher`: the restructured encoder trains on CTC + KL to the frozen teacher's frame
    posteriors (logged as train/kd: ~0 while the student still is the teacher, > 0 once it is halved), the card
    names the teacher, and a teacher over another vocabulary is refused with one line."""
    import csv

    from bridgeocr.cli import main
    from conftest import BOX_WORDS, load_script, make_box_dataset

    src = make_box_dataset(tmp_path / "data", n=12)
    tok = CharTokenizer(sorted(set("".join(BOX_WORDS)) | {" "}))
    tok.save(tmp_path / "tok.json")
    enc, half = tmp_path / "enc", tmp_path / "half"
    assert main(["encoder", "import", "--onnx", str(tiny_onnx), "--tokenizer", str(tmp_path / "tok.json"),
                 "--out", str(enc)]) == 0
    load_script("scripts/read_at_height.py").main([str(enc), str(half), "--halve-columns-at", "1"])

    def kd_values(out):
        rows = list(csv.DictReader(open(out / "metrics.csv")))
        return [float(r["train/kd"]) for r in rows if r.get("train/kd")]

    for student, out in ((enc, tmp_path / "same"), (half, tmp_path / "ft")):
        assert main(["encoder", "train", "--init", str(student), "--teacher", str(enc), "--data", str(src),
                     "--out", str(out), "--steps", "2", "--batch-size", "4", "--lr", "1e-9",
                     "train.log_every_steps=1"]) == 0
    assert max(kd_values(tmp_path / "same")) < 1e-7 < min(kd_values(tmp_path / "ft"))  # 1e-9 vs 3e-5 here
    card = json.loads((tmp_path / "ft" / "encoder_card.json").read_text())
    assert card["teacher"] == str(enc) and card["distill_weight"] == 1.0

    other = CharTokenizer(list("abc "))
    other.save(tmp_path / "other.json")
    assert main(["encoder", "import", "--onnx", str(tiny_onnx), "--tokenizer", str(tmp_path / "other.json"),
                 "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["encoder", "train", "--init", str(half), "--teacher", str(tmp_path / "other"), "--data", str(src),
                 "--out", str(tmp_path / "bad"), "--steps", "1", "--batch-size", "4"]) != 0
    assert "--teacher" in capsys.readouterr().err


def test_residual_mlps_are_found_and_a_silent_one_drops_without_a_trace(tmp_path):
    """residual_mlps finds each x + conv1x1(act(conv1x1(x))) and nothing in a trunk without them; dropping MLPs
    whose output is zero leaves the features as they were, with fewer nodes and weights, torch and onnxruntime
    agreeing, the same after save/load; numbers the graph lacks are refused."""
    from bridgeocr.models.ppocr import drop_mlps, residual_mlps

    assert residual_mlps(import_ppocr(_tiny_ppocr_onnx(tmp_path / "plain.onnx"))[0].graph.spec) == []
    encoder, head, _ = import_ppocr(_tiny_ppocr_onnx(tmp_path / "silent.onnx", mlps=2, silent_mlps=True), _tokenizer())
    found = residual_mlps(encoder.graph.spec)
    assert [m["add"]["outputs"][0] for m in found] == ["m0.res", "m1.res"]
    images, mask = torch.rand(2, 1, 48, 96), torch.ones(2, 96, dtype=torch.bool)
    with torch.no_grad():
        before = encoder(images, mask)[0]
    params = sum(p.numel() for p in encoder.parameters())
    drop_mlps(encoder, [1, 2])
    assert residual_mlps(encoder.graph.spec) == [] and not any(n["op"] == "Relu" and n["outputs"][0].startswith("m")
                                                               for n in encoder.graph.spec["nodes"])
    assert sum(p.numel() for p in encoder.parameters()) == params - 2 * (2 * (2 * 8 * 8) + 2 * 8 + 8)  # both convs
    with torch.no_grad():
        after = encoder(images, mask)[0]
        x = encoder.pixels(images)
        assert torch.allclose(encoder.graph(x), encoder._ort(x), atol=1e-5)
    assert torch.allclose(after, before, atol=1e-6)
    save_encoder(tmp_path / "enc", encoder, head)
    loaded, _ = load_encoder(tmp_path / "enc")
    with torch.no_grad():
        assert torch.allclose(loaded(images, mask)[0], before, atol=1e-6)
    with pytest.raises(ConfigError, match="no residual MLP 3; it has 2"):
        drop_mlps(import_ppocr(_tiny_ppocr_onnx(tmp_path / "two.onnx", mlps=2))[0], [3])


def test_a_fitted_stand_in_replaces_an_mlp_better_than_a_cut(tmp_path):
    """drop_mlps with calibration inputs: where the dropped MLP's output was, a full-rank linear stand-in is at
    least as close to the full trunk's values as a bias alone, and a bias at least as close as the cut (least
    squares over ever larger families of maps); on other lines too, the stand-in's features are nearer the full
    trunk's than the cut's; torch and onnxruntime agree on the new nodes."""
    import copy

    from bridgeocr.models.ppocr import _values, drop_mlps

    full = import_ppocr(_tiny_ppocr_onnx(tmp_path / "m.onnx", mlps=2))[0]
    rng = torch.Generator().manual_seed(0)
    calibration = [full.pixels(torch.rand(1, 1, 48, w, generator=rng)) for w in (64, 96, 128, 64)]
    held_out = full.pixels(torch.rand(1, 1, 48, 96, generator=rng))
    target = _values(full.graph.spec, full.graph.arrays(), ["m1.res"], calibration)[0]

    def err(encoder, x=None):
        if x is not None:
            with torch.no_grad():
                return float((encoder.graph(x) - full.graph(x)).pow(2).mean())
        got = _values(encoder.graph.spec, encoder.graph.arrays(), [
            "m1.res" if any(n["outputs"][0] == "m1.res" for n in encoder.graph.spec["nodes"]) else "m0.res"],
            calibration)[0]
        return float((got - target).pow(2).mean())

    cut = drop_mlps(copy.deepcopy(full), [2])
    bias = drop_mlps(copy.deepcopy(full), [2], calibration=calibration, rank=0)
    linear = drop_mlps(copy.deepcopy(full), [2], calibration=calibration, rank=8)
    assert err(linear) <= err(bias) * 1.001 and err(bias) <= err(cut) and err(linear) < err(cut)
    assert err(linear, held_out) < err(cut, held_out)
    with torch.no_grad():
        assert torch.allclose(linear.graph(held_out), linear._ort(held_out), atol=1e-5)
    both = drop_mlps(copy.deepcopy(full), [1, 2], calibration=calibration, rank=8)
    assert err(both, held_out) < err(drop_mlps(copy.deepcopy(full), [1, 2]), held_out)


def test_drop_mlps_script_lists_cuts_and_fits(tmp_path, capsys):
    """scripts/drop_mlps.py: --list names each residual MLP with its multiply-adds; OUT without --mlps is the
    encoder as it was; with --mlps and --calibration an encoder directory that reads, whose card says what
    was dropped and the cost before and after; an existing OUT is refused."""
    from bridgeocr.models.load import load_checkpoint
    from conftest import BOX_WORDS, load_script, make_box_dataset

    tok = CharTokenizer(sorted(set("".join(BOX_WORDS)) | {" "}))
    src = make_box_dataset(tmp_path / "data", n=6)
    enc = tmp_path / "enc"
    save_encoder(enc, *import_ppocr(_tiny_ppocr_onnx(tmp_path / "m.onnx", mlps=2), tok)[:2])
    tok.save(enc / "tokenizer.json")
    script = load_script("scripts/drop_mlps.py")
    assert script.main([str(enc), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "m0.res" in listed or "  1 " in listed
    assert listed.count("MMAC") == 2
    script.main([str(enc), str(tmp_path / "same")])
    script.main([str(enc), str(tmp_path / "cut"), "--mlps", "2", "--rank", "4", "--calibration", str(src),
                 "--lines", "4"])
    card = json.loads((tmp_path / "cut" / "encoder_card.json").read_text())
    assert card["dropped_mlps"] == [2] and card["stand_in_rank"] == 4
    assert card["gmac_per_608px_line"]["after"] < card["gmac_per_608px_line"]["before"]
    images, mask = torch.rand(1, 1, 48, 64), torch.ones(1, 64, dtype=torch.bool)
    same, _, _ = load_checkpoint(tmp_path / "same")
    cut, _, _ = load_checkpoint(tmp_path / "cut")
    orig, _ = load_encoder(enc)
    with torch.no_grad():
        assert torch.allclose(same.encoder(images, mask)[0], orig(images, mask)[0], atol=1e-6)
        assert cut.encoder(images, mask)[0].shape == orig(images, mask)[0].shape
    with pytest.raises(SystemExit, match="exists"):
        script.main([str(enc), str(tmp_path / "cut"), "--mlps", "1"])
    script.main([str(enc), str(tmp_path / "narrow"), "--mlps", "1,2", "--keep", "0.5", "--calibration", str(src),
                 "--lines", "4"])
    card = json.loads((tmp_path / "narrow" / "encoder_card.json").read_text())
    assert card["shrunk_mlps"] == [1, 2] and card["kept_hidden"] == 0.5 and card["dropped_mlps"] == []
    assert card["gmac_per_608px_line"]["after"] < card["gmac_per_608px_line"]["before"]
    with pytest.raises(SystemExit):  # --keep needs lines to re-fit on
        script.main([str(enc), str(tmp_path / "narrow2"), "--mlps", "1", "--keep", "0.5"])


def test_real_ppocrv6_has_eleven_residual_mlps():
    """PP-OCRv6_rec_small: 3 residual MLPs in stage 2, 6 in stage 3, 2 in stage 4; dropping the last leaves a
    trunk onnxruntime and torch run alike, with as many tokens."""
    from bridgeocr.models.ppocr import drop_mlps, residual_mlps

    encoder = import_ppocr(_real_onnx())[0]
    found = residual_mlps(encoder.graph.spec)
    widths = [encoder.graph.spec["initializers"][n["inputs"][1]]["shape"][1] for m in found for n in m["nodes"]
              if n["op"] == "Conv" and n["inputs"][0] == m["skip"]]
    assert widths == [96] * 3 + [192] * 6 + [384] * 2
    drop_mlps(encoder, [11])
    x = torch.rand(1, 1, 48, 64)
    with torch.no_grad():
        px = encoder.pixels(x)
        assert torch.allclose(encoder.graph(px), encoder._ort(px), atol=1e-3)
        assert encoder(x, torch.ones(1, 64, dtype=torch.bool))[0].shape == (1, 8, 120)


def test_swap_encoder_puts_a_cut_trunk_into_an_ocr_model(tmp_path):
    """scripts/swap_encoder.py: an OCR model built on the full trunk takes a trunk without an MLP (another
    structure) and its CTC head, reads with them after loading, and keeps its tokenizer file byte for byte; an
    encoder that reads lines of another height is refused."""
    from bridgeocr.config import ConnectorConfig, DecoderConfig, EncoderConfig, ModelConfig
    from bridgeocr.models.load import load_checkpoint
    from bridgeocr.models.ocr import OCRModel
    from bridgeocr.models.ppocr import drop_mlps, read_at_height
    from conftest import load_script

    tok = _tokenizer()
    onnx_path = _tiny_ppocr_onnx(tmp_path / "m.onnx", mlps=2)
    cfg = ModelConfig(encoder=EncoderConfig(kind="ppocr", onnx=str(onnx_path)), ctc_head=True,
                      connector=ConnectorConfig(kind="ctc_collapse"),
                      decoder=DecoderConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    OCRModel(cfg, tok.vocab_size, image_height=48, tokenizer=tok).save_pretrained(tmp_path / "m")
    encoder, head, _ = import_ppocr(onnx_path, tok)
    drop_mlps(encoder, [2])
    with torch.no_grad():
        head.proj.bias.add_(0.5)
    save_encoder(tmp_path / "cut", encoder, head)
    script = load_script("scripts/swap_encoder.py")
    script.main([str(tmp_path / "m"), str(tmp_path / "cut"), str(tmp_path / "m2")])
    model, _, _ = load_checkpoint(tmp_path / "m2")
    x, m = torch.rand(1, 1, 48, 64), torch.ones(1, 64, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model.ctc_head(model.encoder(x, m)[0]), head(encoder(x, m)[0]), atol=1e-5)
    assert len(model.read(x, m)) == 1
    assert (tmp_path / "m2" / "tokenizer.json").read_bytes() == (tmp_path / "m" / "tokenizer.json").read_bytes()
    low, low_head, _ = import_ppocr(onnx_path, tok)
    save_encoder(tmp_path / "low", read_at_height(low, 32), low_head)
    with pytest.raises(SystemExit, match="reads lines as"):
        script.main([str(tmp_path / "m"), str(tmp_path / "low"), str(tmp_path / "m3")])


def test_encoder_cost_reads_variants_without_mlps(tmp_path):
    """benchmarks/encoder_cost.py --drop-mlps: `N,N[:RANK|:cut]` gives a trunk without those MLPs, fitted or cut,
    that onnxruntime runs into as many tokens; the label says which and how."""
    from types import SimpleNamespace

    from bridgeocr.models.ppocr import residual_mlps
    from conftest import load_script

    bench = load_script("benchmarks/encoder_cost.py")
    encoder = import_ppocr(_tiny_ppocr_onnx(tmp_path / "m.onnx", mlps=2))[0]
    images, mask = torch.rand(1, 1, 48, 70), torch.ones(1, 70, dtype=torch.bool)
    x = encoder.line_input(images, mask)
    assert x.shape == (1, 3, 48, 72)  # rounded up to the 8 px token
    reader = SimpleNamespace(encoder=encoder)
    for spec, how in (("2:4", "rank-4 stand-ins"), ("1,2:cut", "cut out"), ("2", "rank-64 stand-ins")):
        label, model = bench.without_mlps(reader, spec, [x])
        assert how in label and spec.split(":")[0] in label
        out = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
        assert out.shape == (1, 9, 8)
    label, model = bench.narrower_mlps(reader, "1,2:0.5", [x])
    assert "at 0.5 of their hidden width" in label
    assert ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0].shape == (1, 9, 8)
    assert len(residual_mlps(encoder.graph.spec)) == 2  # the reader's own encoder is left as it was
    from bridgeocr.config import ImageConfig  # --heights: the encoder and the settings move together,
    cfg = bench.read_at(reader, ImageConfig(height=48, width_scale=1.25), 32)  # each line as wide as before
    assert encoder.image_height == 32 and cfg.height == 32 and cfg.width_scale == 1.25 * 48 / 32


def test_shrink_mlps_keeps_the_width_asked_and_refits_the_output(tmp_path):
    """shrink_mlps: keeping every hidden channel reproduces the trunk (the re-fit finds nearly the same output conv);
    keeping half halves the hidden convs, runs alike in torch and onnxruntime, and its MLP output on the
    calibration lines is at least as close to the full trunk's as a least-squares bias alone would be (the
    re-fit includes the bias); numbers or shares out of range are refused."""
    import copy

    from bridgeocr.models.ppocr import _values, drop_mlps, shrink_mlps

    full = import_ppocr(_tiny_ppocr_onnx(tmp_path / "m.onnx", mlps=2))[0]
    rng = torch.Generator().manual_seed(1)
    calibration = [full.pixels(torch.rand(1, 1, 48, w, generator=rng)) for w in (64, 96, 128, 64, 160)]
    x = full.pixels(torch.rand(1, 1, 48, 96, generator=rng))
    with torch.no_grad():
        reference = full.graph(x)
    same = shrink_mlps(copy.deepcopy(full), [1, 2], 1.0, calibration)
    half = shrink_mlps(copy.deepcopy(full), [2], 0.5, calibration)
    with torch.no_grad():  # all kept: the trunk again, but for the ridge's small pull
        off = float((same.graph(x) - reference).abs().max())
        assert off < 2e-2 and off < float((half.graph(x) - reference).abs().max())
    shapes = half.graph.spec["initializers"]
    assert shapes["m1.w1"]["shape"] == [8, 8, 1, 1] and shapes["m1.w2"]["shape"] == [8, 8, 1, 1]
    assert shapes["m0.w1"]["shape"] == [16, 8, 1, 1]  # the other MLP is left as it was
    with torch.no_grad():
        assert torch.allclose(half.graph(x), half._ort(x), atol=1e-5)
    target = _values(full.graph.spec, full.graph.arrays(), ["m1.res"], calibration)[0]

    def err(encoder):
        got = _values(encoder.graph.spec, encoder.graph.arrays(), ["m1.res"], calibration)[0]
        return float((got - target).pow(2).mean())

    assert err(half) <= err(drop_mlps(copy.deepcopy(full), [2], calibration=calibration, rank=0)) * 1.001
    with pytest.raises(ConfigError, match="no residual MLP 3"):
        shrink_mlps(copy.deepcopy(full), [3], 0.5, calibration)
    with pytest.raises(ConfigError, match="not in"):
        shrink_mlps(copy.deepcopy(full), [1], 1.5, calibration)


def test_an_encoder_that_has_run_in_onnxruntime_can_be_copied(tiny_onnx):
    """copy.deepcopy of an encoder whose onnxruntime sessions exist (they cannot be pickled): the copy reads the
    same, with sessions of its own, and changing it leaves the original as it was."""
    import copy

    encoder = import_ppocr(tiny_onnx)[0]
    images, mask = torch.rand(2, 1, 48, 64), torch.ones(2, 64, dtype=torch.bool)
    with torch.no_grad():
        before = encoder(images, mask)[0]
        twin = copy.deepcopy(encoder)
        assert twin._ort is not encoder._ort and twin._ort.graph is twin.graph
        assert torch.allclose(twin(images, mask)[0], before, atol=1e-6)
        for p in twin.parameters():
            p.add_(0.1)
        assert not torch.allclose(twin(images, mask)[0], before, atol=1e-3)
        assert torch.allclose(encoder(images, mask)[0], before, atol=1e-6)


def test_conv_macs_counts_each_convolution_at_its_output_shape(tmp_path):
    """onnx_graph.conv_macs: per convolution, output elements x (input channels per group x kernel area), at the
    input shape asked; the first conv of the tiny trunk (3 -> 8 channels, 3x3, stride 2) by hand."""
    from bridgeocr.models.onnx_graph import conv_macs

    model = import_ppocr(_tiny_ppocr_onnx(tmp_path / "m.onnx", mlps=1))[0].graph.to_onnx()
    macs = conv_macs(model, (1, 3, 48, 64))
    assert macs["c1"] == 8 * 24 * 32 * (3 * 3 * 3)
    assert macs["c2"] == 8 * 12 * 16 * (1 * 3 * 3)  # depthwise: one input channel per group
    assert macs["m0.up"] == 16 * 6 * 16 * 8 and set(macs) >= {"c3", "se_fc", "m0.down"}
    assert conv_macs(model, (1, 3, 48, 128))["c1"] == 2 * macs["c1"]
