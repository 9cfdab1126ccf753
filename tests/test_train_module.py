import pytest
import torch

from bridgeocr.config import ExperimentConfig, ModelConfig
from bridgeocr.data.sample import Batch
from bridgeocr.data.tokenizers import CharTokenizer
from bridgeocr.errors import ConfigError
from bridgeocr.train.module import OCRLightningModule, param_group_name, parse_freeze_schedule
from bridgeocr.train.run import shard


def tiny_cfg(**optim) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.data.image.height = 16
    m: ModelConfig = cfg.model
    m.encoder.dim, m.encoder.depth, m.encoder.heads = 32, 1, 2
    m.encoder.patch_height, m.encoder.patch_width, m.encoder.conv_stem = 16, 4, False
    m.connector.kind = "linear"
    m.decoder.n_layer, m.decoder.n_embd, m.decoder.n_head, m.decoder.n_positions = 1, 32, 2, 64
    m.max_text_tokens = 40
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return cfg


def tiny_batch(tok) -> Batch:
    torch.manual_seed(0)
    texts = ["ab c", "cab"]
    seqs = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts]
    T = max(map(len, seqs))
    ids = torch.full((2, T), tok.pad_id)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    images = torch.rand(2, 1, 16, 32)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, 24:] = False
    return Batch(images, mask, ids, ids != tok.pad_id, texts, ["a", "b"])


def build(cfg):
    from bridgeocr.models.ocr import OCRModel

    tok = CharTokenizer.build(["abc "])
    model = OCRModel(cfg.model, tok.vocab_size, image_height=16, tokenizer=tok)
    return OCRLightningModule(model, cfg, tok), tok


def test_param_groups_and_schedule_parsing():
    assert param_group_name("encoder.blocks.0.w") == "encoder"
    assert param_group_name("ctc_head.proj.weight") == "encoder"
    assert param_group_name("decoder.wte.weight") == "decoder"
    assert param_group_name("connector.proj.weight") == "connector"
    assert parse_freeze_schedule([{"until_step": 5, "train": ["connector"]}]) == [(5, {"connector"})]
    assert parse_freeze_schedule([{"until_step": 5, "freeze": "decoder"}]) == [(5, {"encoder", "connector"})]
    with pytest.raises(ConfigError, match="unknown group"):
        parse_freeze_schedule([{"until_step": 5, "train": ["vision"]}])
    with pytest.raises(ConfigError):
        parse_freeze_schedule([{"train": ["connector"]}])


def test_optimizer_has_one_lr_per_group():
    module, _ = build(tiny_cfg(lr_encoder=1e-4, lr_connector=2e-3, lr_decoder=3e-4, warmup_steps=0))
    opt = module.configure_optimizers()["optimizer"]
    lrs = {g["name"].split("/")[0]: g["lr"] for g in opt.param_groups}
    assert lrs == {"encoder": 1e-4, "connector": 2e-3, "decoder": 3e-4}
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    nd = [g for g in opt.param_groups if g["name"].endswith("no_decay")]
    assert nd and all(g["weight_decay"] == 0 for g in nd)


def test_freeze_schedule_trains_only_connector_first():
    cfg = tiny_cfg(warmup_steps=0, freeze_schedule=[{"until_step": 1, "train": ["connector"]}])
    module, tok = build(cfg)
    opt = module.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    loss, parts = module._loss(tiny_batch(tok))
    assert set(parts) == {"ce"}
    loss.backward()
    module.on_after_backward()  # global_step 0 < until_step 1: only the connector keeps its gradients
    opt.step()
    changed = {param_group_name(n) for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"connector"}
    assert module.trained_groups(0) == {"connector"}
    assert module.trained_groups(1) == {"encoder", "connector", "decoder"}


def test_kd_and_ctc_terms_enter_the_loss():
    from bridgeocr.models.decoder import GPT

    cfg = tiny_cfg()
    cfg.loss.kd_alpha, cfg.loss.kd_tau, cfg.loss.ctc_weight = 0.5, 2.0, 0.3
    cfg.model.ctc_head = True
    tok = CharTokenizer.build(["abc "])
    from bridgeocr.models.ocr import OCRModel

    model = OCRModel(cfg.model, tok.vocab_size, image_height=16, tokenizer=tok)
    teacher = GPT(cfg.model.decoder, tok.vocab_size)
    module = OCRLightningModule(model, cfg, tok, teacher=teacher)
    assert "_teacher" not in dict(module.named_children()) and module.teacher is teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    loss, parts = module._loss(tiny_batch(tok))
    assert set(parts) == {"ce", "kd", "ctc"}
    assert torch.allclose(loss, parts["ce"] + 0.5 * parts["kd"] + 0.3 * parts["ctc"], atol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_shard_lines_for_ddp():
    lines = list(range(9))
    r0, r1 = shard(lines, 0, 2, even=True), shard(lines, 1, 2, even=True)
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
    v0, v1 = shard(lines, 0, 2, even=False), shard(lines, 1, 2, even=False)
    assert sorted(v0 + v1) == lines
    assert shard(lines, 0, 1, even=True) == lines


def test_input_dropout_corrupts_inputs_not_targets():
    cfg = tiny_cfg()
    cfg.loss.input_dropout = 1.0
    module, tok = build(cfg)
    batch = tiny_batch(tok)
    module.train()
    corrupted = module._corrupt_inputs(batch)
    real = batch.attention_mask.bool()
    assert (corrupted.input_ids[:, 0] == tok.bos_id).all()  # BOS kept
    assert (corrupted.input_ids[:, 1:][real[:, 1:]] == tok.unk_id).all()
    assert (corrupted.input_ids[~real] == tok.pad_id).all()  # padding untouched
    assert torch.equal(batch.input_ids, tiny_batch(tok).input_ids)  # the targets are not modified
    module.eval()
    assert module._corrupt_inputs(batch) is batch  # never at evaluation
    cfg.loss.input_dropout = 0.0
    module.train()
    assert module._corrupt_inputs(batch) is batch
