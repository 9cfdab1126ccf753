"""Typed experiment configs: dataclasses, loaded from YAML with dotted `key=value` overrides.

One YAML file per experiment; every field has a default, so a config only says what differs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridgeocr.errors import ConfigError


@dataclass
class ImageConfig:
    """How a line image becomes a tensor (see data/preprocess.py)."""

    height: int = 32
    width_policy: str = "pad"  # pad: keep aspect, pad to batch width | resize: squeeze to resize_width
    max_width: int = 1024  # pad policy: lines wider than this are downscaled
    resize_width: int = 256  # resize policy: every line gets this width
    width_multiple: int = 8  # padded widths are rounded up to this (the encoder's patch width)
    # pad policy: every line is stretched this much wider than its aspect ratio gives. The shipped PP-OCR
    # encoder reads at 1.25: one frame per 8 px is too few for many Latin hands (docs/reading.md section 7)
    width_scale: float = 1.0


@dataclass
class DataConfig:
    """Where lines come from. `source` is a path (IAM root, manifest .tsv/.jsonl, synth dir)."""

    source: str = "runs/data/synth"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    split_file: str | None = None  # manifest: TSV `path<TAB>split[<TAB>group]` (auto-found beside it)
    iam_split_dir: str | None = None  # IAM only: folder with the split lists
    drop_err: bool = False  # IAM only: drop lines marked `err`
    allow_outside: bool = False  # manifests: accept image paths outside the manifest's folder (else refused)
    split_by: str = "page"  # PAGE / ALTO without a split file: a hash of the page's (or document's) name
    max_train_samples: int | None = None
    max_eval_samples: int | None = None  # cap on val and test lines
    max_val_samples: int | None = None  # a tighter cap for the validations during training (val only)
    num_workers: int = 0
    # a frozen encoder's tokens, computed once per line and reused (data/features.py): auto (under
    # train.out_dir/.feature_cache when model.encoder.freeze) | off | a directory
    feature_cache: str = "auto"
    image: ImageConfig = field(default_factory=ImageConfig)


@dataclass
class TokenizerConfig:
    kind: str = "char"  # char | bpe
    path: str | None = None  # a saved tokenizer JSON or a local HF tokenizer dir


@dataclass
class EncoderConfig:
    """ViT over the line with rectangular patches (patch_height x patch_width)."""

    kind: str = "vit"  # vit (ours) | ppocr (PP-OCR's recogniser from ONNX, models/ppocr.py)
    onnx: str | None = None  # kind ppocr: the .onnx file (default: rapidocr's PP-OCRv6_rec_small)
    patch_height: int = 32  # = image height: one row of patches, tokens run left to right
    patch_width: int = 8
    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    pos_embedding: str = "sincos"  # sincos | learned (interpolated to any width)
    conv_stem: bool = True  # a small conv stem before patchifying (helps tiny models read)
    max_width: int = 2048
    pretrained: str | None = None  # a local dir: our encoder (save_pretrained) or an HF ViT/DeiT/BEiT
    freeze: bool = False


@dataclass
class ConnectorConfig:
    """The bridge from visual tokens to decoder inputs, built by name (models/connectors/).

    Here is what every kind shares. A kind's own settings (a Q-Former's queries and layers, ...) are declared
    beside it, in its file under models/connectors/, so adding a kind touches that file alone. YAML and
    overrides write them flat (`model.connector.num_queries=64`); they are kept in `options` and checked
    against the kind's settings when the config is read (models/connectors/registry.py).
    """

    kind: str = "linear_gelu_ln"  # a registered kind: `bridgeocr.models.connectors.connector_names()`
    reduce: str | None = None  # None | pool | concat: merge `reduce_k` neighbouring tokens first
    reduce_k: int = 1
    # random | ctc: a token-wise kind fitted, before training, to the ctc_embed prefix the GPT learnt to
    # read (train/connector_init.py; needs an encoder with a CTC head)
    init: str = "random"
    options: dict[str, Any] = field(default_factory=dict)  # the kind's own settings (see above)

    @classmethod
    def of(cls, kind: str, **fields) -> ConnectorConfig:
        """`ConnectorConfig.of("qformer", num_queries=64, reduce="pool")`: shared fields by name, the rest
        the kind's options (as YAML writes them)."""
        shared = {k: fields.pop(k) for k in list(fields) if k in CONNECTOR_SHARED}
        return cls(kind=kind, **shared, options={**shared.pop("options", {}), **fields})


# The fields every connector kind has; any other key under a connector's section is one of its kind's options.
CONNECTOR_SHARED = ("kind", "reduce", "reduce_k", "init", "options")


@dataclass
class DecoderConfig:
    """GPT-2 architecture; default 3 blocks."""

    n_layer: int = 3
    n_embd: int = 192
    n_head: int = 3
    n_positions: int = 512  # visual + text tokens
    dropout: float = 0.0
    pretrained: str | None = None  # a local HF GPT-2-style dir; keeps its first n_layer blocks
    freeze: str = "none"  # none | all | top:N (all but the top N blocks frozen)
    # visual token i gets position embedding i (an alignment prior); None: as the pretrained LM was trained
    # (`lm train --prefix-read` sets it), False for a fresh decoder
    prefix_positions: bool | None = None


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    attach_layer: int = 0  # visual tokens enter before decoder block k (0: prefix at the embeddings)
    ctc_head: bool = False  # a CTC head on the encoder (fast decoding, joint loss)
    ctc_upsample: int = 3  # CTC frames per encoder token
    decoding: str = "gpt"  # how the model reads unless told: gpt (the decoder) | ctc (the encoder's CTC head)
    #                        | joint (beam search scored by both, models/joint_decoding.py; needs ctc_head)
    joint_ctc_weight: float = 0.5  # weight of the CTC prefix score in joint decoding (the GPT gets 1 - it)
    joint_beam: int = 4  # beam width of joint decoding unless --beam / train.eval_beam says otherwise
    # joint decoding scores with the CTC head only each hypothesis' N best next ids by the GPT (+ EOS): ESPnet's
    # partial scoring (models/joint_decoding.py). 0: every id (exact). Measured in docs/benchmarks.md
    joint_pre_beam: int = 0
    # joint decoding at beam > 1 checks the CTC head's reading with the GPT first (one parallel pass) and runs
    # the beam search only on lines where the joint score departs from it (models/joint_decoding.py,
    # draft_first_search; `--full-search` / false: every line). Measured in docs/benchmarks.md, "Draft first"
    joint_draft: bool = True
    # reading: a line whose first greedy CTC path emits more letters per frame than this is read again,
    # stretched wider by letters / frames / this (models/widening.py; needs the CTC head). 0: off.
    # Measured in docs/reading.md section 7
    widen_crowded: float = 0.65
    # GPT decoding: a line ends once it repeats one unit (2-16 tokens) this many times in a row, keeping one
    # copy (a decoder caught in a loop; models/decoding.py). 0: off. 4 measured in docs/reading.md 4b
    stop_repeats: int = 4
    max_text_tokens: int = 160


@dataclass
class LossConfig:
    """loss = CE + alpha*KD  (form=sum)  or  (1-alpha)*CE + alpha*KD  (form=interpolate)."""

    kd_alpha: float = 0.0
    kd_tau: float = 1.0
    kd_form: str = "sum"  # sum | interpolate
    # how the frozen teacher Q reads the text (train/teacher.py): lm (None, the default: a plain LM) |
    # prefix (the text's own embeddings in place of the visual tokens, then the text) | an LM dir (= lm with it)
    kd_teacher: str | None = None
    kd_teacher_dir: str | None = None  # the teacher LM for lm / prefix; default: model.decoder.pretrained
    kd_start_step: int = 0  # KD only from this optimiser step on (a schedule: distil once the model reads)
    kd_memo_mb: float = 1024.0  # the frozen teacher's logits per line kept in memory up to this size (0: off)
    ctc_weight: float = 0.0  # joint CTC + attention
    input_dropout: float = 0.0  # share of input text tokens replaced by UNK in training (forces reading)


@dataclass
class OptimConfig:
    lr_encoder: float = 3e-4
    lr_connector: float = 1e-3
    lr_decoder: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    max_steps: int = 2000
    max_epochs: int = 1000
    max_minutes: float | None = None  # a wall-clock budget; stops cleanly (checkpoint written)
    batch_size: int = 16
    grad_clip: float = 1.0
    accumulate: int = 1
    freeze_schedule: list[dict] = field(default_factory=list)  # e.g. [{until_step: 300, train: [connector]}]


@dataclass
class TrainConfig:
    name: str = "run"
    out_dir: str = "runs/train"
    seed: int = 1234
    precision: str = "auto"  # auto (bf16 on GPU, 32 on CPU) | 32 | bf16-mixed | 16-mixed
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    val_every_steps: int | None = None  # default: once per epoch
    eval_beam: int | None = None  # beam of val (GPT) and test decoding; None: 1, or model.joint_beam for joint
    log_every_steps: int = 20


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=ExperimentConfig):
    """Defaults <- YAML file <- dotted overrides (`model.connector.kind=qformer`), type-checked."""
    schema = OmegaConf.structured(cls)
    layers = []
    if path is not None:
        layers.extend(_yaml_layers(Path(path)))
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected dotted.key=value")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    layers = [schema] + [lift_connector_options(layer, cls) for layer in layers]
    try:
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        where = str(path) if path else "overrides"
        key = getattr(exc, "full_key", None)
        prefix = f"{where}: {key}: " if key else f"{where}: "
        raise ConfigError(prefix + str(exc).splitlines()[0]) from None
    if isinstance(cfg, ExperimentConfig):
        validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------- validation
# Values that cannot be meant are refused when the config is read, before any run directory is written.
# Each row: (dotted key, predicate on the value, what the value must be).

ENCODER_KINDS = ("vit", "ppocr", "hf")  # hf: an HF ViT/DeiT/BEiT, set by loading model.encoder.pretrained
PRECISIONS = ("auto", "32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true", "64",
              "64-true", "transformer-engine", "transformer-engine-float16")  # what Lightning reads


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ge(n):
    return (lambda v: _finite(v) and v >= n), f">= {n}"


def _one_of(*names):
    return (lambda v: v in names), "one of " + " | ".join("null" if n is None else str(n) for n in names)


def _or_null(rule):
    pred, text = rule
    return (lambda v: v is None or pred(v)), f"null or {text}"


POSITIVE = _ge(1)
NONNEG = _ge(0)
GT0 = (lambda v: _finite(v) and v > 0), "> 0"
UNIT = (lambda v: _finite(v) and 0 <= v <= 1), "in [0, 1]"
FREEZE = (lambda v: re.fullmatch(r"none|all|top:\d+", str(v).strip()) is not None), "none | all | top:N"
EPOCHS = (lambda v: v == -1 or (_finite(v) and v >= 1)), ">= 1 (or -1: no limit)"

RULES = (
    ("data.image.height", *POSITIVE),
    ("data.image.width_policy", *_one_of("pad", "resize")),
    ("data.split_by", *_one_of("page", "document")),
    ("data.image.max_width", *POSITIVE),
    ("data.image.resize_width", *POSITIVE),
    ("data.image.width_multiple", *POSITIVE),
    ("data.image.width_scale", *GT0),
    ("data.max_train_samples", *_or_null(POSITIVE)),
    ("data.max_eval_samples", *_or_null(POSITIVE)),
    ("data.max_val_samples", *_or_null(POSITIVE)),
    ("data.num_workers", *NONNEG),
    ("tokenizer.kind", *_one_of("char", "bpe")),
    ("model.encoder.kind", *_one_of(*ENCODER_KINDS)),
    ("model.encoder.patch_height", *POSITIVE),
    ("model.encoder.patch_width", *POSITIVE),
    ("model.encoder.dim", *POSITIVE),
    ("model.encoder.depth", *POSITIVE),
    ("model.encoder.heads", *POSITIVE),
    ("model.encoder.mlp_ratio", *GT0),
    ("model.encoder.dropout", *UNIT),
    ("model.encoder.pos_embedding", *_one_of("sincos", "learned")),
    ("model.encoder.max_width", *POSITIVE),
    ("model.connector.reduce", *_one_of(None, "none", "pool", "concat")),
    ("model.connector.reduce_k", *POSITIVE),
    ("model.connector.init", *_one_of("random", "ctc")),
    ("model.decoder.n_layer", *POSITIVE),
    ("model.decoder.n_embd", *POSITIVE),
    ("model.decoder.n_head", *POSITIVE),
    ("model.decoder.n_positions", *POSITIVE),
    ("model.decoder.dropout", *UNIT),
    ("model.decoder.freeze", *FREEZE),
    ("model.attach_layer", *NONNEG),
    ("model.ctc_upsample", *POSITIVE),
    ("model.decoding", *_one_of("gpt", "ctc", "joint")),
    ("model.joint_ctc_weight", *UNIT),
    ("model.joint_beam", *POSITIVE),
    ("model.joint_pre_beam", *NONNEG),
    ("model.widen_crowded", *NONNEG),
    ("model.stop_repeats", *NONNEG),
    ("model.max_text_tokens", *POSITIVE),
    ("loss.kd_alpha", *NONNEG),
    ("loss.kd_tau", *GT0),
    ("loss.kd_form", *_one_of("sum", "interpolate")),
    ("loss.kd_start_step", *NONNEG),
    ("loss.kd_memo_mb", *NONNEG),
    ("loss.ctc_weight", *NONNEG),
    ("loss.input_dropout", *UNIT),
    ("optim.lr_encoder", *GT0),
    ("optim.lr_connector", *GT0),
    ("optim.lr_decoder", *GT0),
    ("optim.weight_decay", *NONNEG),
    ("optim.warmup_steps", *NONNEG),
    ("optim.max_steps", *POSITIVE),
    ("optim.max_epochs", *EPOCHS),
    ("optim.max_minutes", *_or_null(NONNEG)),  # null or 0: no wall-clock limit (train/module.py, run.py)
    ("optim.batch_size", *POSITIVE),
    ("optim.grad_clip", *NONNEG),  # 0: no clipping
    ("optim.accumulate", *POSITIVE),
    ("train.name", lambda v: bool(str(v).strip()), "a non-empty name"),
    ("train.precision", lambda v: str(v) in PRECISIONS, "one of " + " | ".join(PRECISIONS)),
    ("train.num_nodes", *POSITIVE),
    ("train.val_every_steps", *_or_null(POSITIVE)),  # null: once per epoch
    ("train.eval_beam", *_or_null(POSITIVE)),
    ("train.log_every_steps", *POSITIVE),
)

# Rows over two keys: (dotted key, predicate on the whole config, what the key's value must be).
CROSS_RULES = (
    ("loss.kd_alpha", lambda c: c.loss.kd_form != "interpolate" or c.loss.kd_alpha <= 1,
     "<= 1 with loss.kd_form=interpolate ((1 - alpha) * CE)"),
    ("model.attach_layer", lambda c: c.model.attach_layer < max(1, c.model.decoder.n_layer),
     "< model.decoder.n_layer (visual tokens enter before one of its blocks)"),
)


# Checks a package above adds for the part of the config it owns, run by `validate` after the rows above:
# models/connectors checks the connector's kind and its options (a kind's settings live with it), and adds
# its check when it is imported, which every command that trains or builds a model does.
CHECKS: dict[str, Callable[[ExperimentConfig], None]] = {}


def _get(cfg, key: str):
    return reduce(getattr, key.split("."), cfg)


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """ConfigError `config: KEY must be REQUIREMENT, got VALUE` for the first value that cannot be meant."""
    for key, ok, requirement in RULES:
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"config: {key} must be {requirement}, got {value!r}")
    for key, ok, requirement in CROSS_RULES:
        if not ok(cfg):
            raise ConfigError(f"config: {key} must be {requirement}, got {_get(cfg, key)!r}")
    for check in CHECKS.values():
        check(cfg)
    return cfg


def _yaml_layers(path: Path, seen: tuple = ()) -> list:
    """A YAML file and, first, the chain of files it names with `base:` (relative to itself)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base:` chain loops back to itself")
    layer = read_yaml(path)
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config sections")
    base = layer.pop("base", None)
    if base is None:
        return [layer]
    return _yaml_layers(path.parent / str(base), seen + (path.resolve(),)) + [layer]


def read_yaml(path: str | Path):
    """OmegaConf.load, its errors as one ConfigError naming the file (and for syntax errors, its line):
    `configs/x.yaml:7: YAML syntax error: did not find expected ',' or ']'`."""
    try:
        return OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = exc.problem or exc.context or type(exc).__name__
        if exc.context and exc.problem and exc.context_mark is not None:
            what += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: YAML syntax error: {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    except Exception as exc:  # e.g. an unparsable ${...} interpolation
        raise ConfigError(f"{path}: not a valid config: {str(exc).splitlines()[0]}") from None


def lift_connector_options(layer, cls=None):
    """A raw config layer with the connector's flat keys (`num_queries: 64`) moved into its `options`,
    where the typed config keeps a kind's own settings (ConnectorConfig). `cls`: what the layer is a layer
    of (it says where the connector's section is); others come back as they are."""
    at = _CONNECTOR_AT.get(cls or ExperimentConfig)
    if at is None:
        return layer
    data = OmegaConf.to_container(layer, resolve=False) if isinstance(layer, DictConfig) else layer
    node = reduce(lambda d, k: d.get(k) if isinstance(d, dict) else None, at, data)
    extra = [k for k in node if k not in CONNECTOR_SHARED] if isinstance(node, dict) else []
    if not extra:
        return layer
    node["options"] = {**(node.get("options") or {}), **{k: node.pop(k) for k in extra}}
    return OmegaConf.create(data)


def config_from_dict(data: dict, cls=ExperimentConfig):
    """Rebuild a typed config from a plain dict (e.g. a checkpoint's JSON; a connector's flat settings, as
    model directories written before `options` have them, are lifted into its options)."""
    try:
        layer = lift_connector_options(OmegaConf.create(data), cls)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), layer))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: {str(exc).splitlines()[0]}") from None


_CONNECTOR_AT = {ExperimentConfig: ("model", "connector"), ModelConfig: ("connector",), ConnectorConfig: ()}


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
