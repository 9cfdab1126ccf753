"""PP-OCR's text-line recogniser (shipped as ONNX in the `rapidocr` wheel) as a trainable bridgeocr encoder.

PP-OCRv6_rec_small: a PPLCNetV4 backbone, an SVTR neck (two global-attention blocks over the width) and an
18,710-way CTC classifier; input [B, 3, 48, W] with pixels `(x/255 - 0.5)/0.5`, output [B, W/8, 18710].

**Visual tokens** are the neck's output, the 120-d sequence the CTC classifier reads (the input of the last
MatMul before the final Softmax): one token per 8 image columns, left to right, already shaped by the
network to be linearly readable as characters. That is what a connector wants; the classifier itself
becomes bridgeocr's CTC head, its rows mapped onto our character vocabulary (`map_ctc_head`).

**Padding never changes an item's tokens.** The neck attends over the whole width, so a wider batch would
change an item's features. Each line therefore runs at its own width (its real columns rounded up to the
8-px token, filled with paper); lines of equal width share one call. The image settings the network was
trained with (height 48, 3 channels, mean/std 0.5, white paper) travel in the encoder's config.json
(`PPOCREncoder.image`), and bridgeocr's grey ink-is-1 tensors are turned into them here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bridgeocr.config import EncoderConfig
from bridgeocr.errors import ConfigError
from bridgeocr.models.ctc import BLANK, CTCHead
from bridgeocr.models.onnx_graph import OnnxGraph, OrtRunner, inferred_shapes, prune_spec, spec_from_onnx

__all__ = ["PPOCREncoder", "PPOCR_IMAGE", "DEFAULT_ONNX", "rapidocr_onnx_path", "import_ppocr", "map_ctc_head",
           "read_at_height", "halve_columns_at", "residual_mlps", "drop_mlps",
           "shrink_mlps"]

DEFAULT_ONNX = "PP-OCRv6_rec_small.onnx"
PPOCR_IMAGE = {"height": 48, "channels": 3, "mean": 0.5, "std": 0.5, "paper": "white", "max_width": 2048,
               "width_multiple": 8}
PROVENANCE = ("PP-OCRv6_rec_small (PaddleOCR, Apache-2.0), as converted to ONNX and shipped in the rapidocr "
              "wheel (PyPI rapidocr==3.10.0, Apache-2.0; see its MODEL_LICENSES.md)")


def rapidocr_onnx_path(name: str = DEFAULT_ONNX) -> Path:
    """The ONNX file inside the installed rapidocr wheel (found without importing rapidocr)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the PP-OCR encoder's weights come from the rapidocr wheel: "
                          "pip install rapidocr==3.10.0 (or pass encoder.onnx=FILE)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise ConfigError(f"{path}: not in this rapidocr install (pip install rapidocr==3.10.0)")
    return path


def _feature_tap(spec: dict) -> tuple[str, str, str | None]:
    """(features, classifier weight, classifier bias) names: Softmax <- [Add bias] <- MatMul(features, W)."""
    producer = {o: n for n in spec["nodes"] for o in n["outputs"]}
    node = producer.get(spec["outputs"][0])
    while node is not None and node["op"] in ("Identity", "Softmax"):
        node = producer.get(node["inputs"][0])
    bias = None
    if node is not None and node["op"] == "Add":
        a, b = node["inputs"]
        bias, node = (b, producer.get(a)) if a in producer else (a, producer.get(b))
    if node is None or node["op"] != "MatMul":
        raise ConfigError("ONNX graph: expected the output to be softmax(features @ W + b) (a CTC classifier)")
    return node["inputs"][0], node["inputs"][1], bias


class PPOCREncoder(nn.Module):
    """`forward(images [B,1,48,W] ink=1, image_mask [B,W]) -> (tokens [B, N, 120], mask [B, N])`."""

    stride = 8  # image columns per token

    def __init__(self, graph: OnnxGraph, cfg: EncoderConfig, d_out: int, image: dict | None = None,
                 source: str = ""):
        super().__init__()
        self.graph, self.source = graph, source
        self.image = dict(PPOCR_IMAGE if image is None else image)
        self._d_out = int(d_out)
        self.cfg = replace(cfg, kind="ppocr", dim=int(d_out), patch_height=self.image_height,
                           patch_width=self.stride, pretrained=None)
        self._ort = OrtRunner(graph)

    def _on_ort(self, x: torch.Tensor) -> bool:
        """Whether the graph runs on onnxruntime: when nothing needs its gradient (a frozen encoder, any
        evaluation) on a CPU; else the trainable torch executor runs it (the two agree to ~1e-5,
        tests/test_models_ppocr.py)."""
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.graph.parameters())
        return not needs_grad and x.device.type == "cpu" and OrtRunner.available()

    @property
    def d_out(self) -> int:
        return self._d_out

    @property
    def image_height(self) -> int:
        """The line height it reads: its image settings' (read_at_height changes them)."""
        return int(self.image["height"])

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """bridgeocr's ink-is-1 grey [B,1,H,W] -> the network's normalised paper-white RGB."""
        paper = 1.0 - images if self.image.get("paper", "white") == "white" else images
        x = (paper - self.image["mean"]) / self.image["std"]
        return x.expand(-1, int(self.image["channels"]), -1, -1)

    def token_counts(self, image_mask: torch.Tensor) -> list[int]:
        widths = image_mask.to(torch.long).sum(1).clamp(min=1)
        return (-(-widths // self.stride)).tolist()

    def line_input(self, images: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """The network's input for one line [1, 1, H, W] (ink = 1): its real columns rounded up to the token,
        normalised as the network was trained (what `forward` runs; calibration reads these)."""
        width = -(-int(image_mask.sum()) // self.stride) * self.stride
        ink = images * image_mask[:, None, None, :].to(images.dtype)  # padding is blank paper
        ink = nn.functional.pad(ink, (0, max(0, width - ink.shape[-1])))
        return self.pixels(ink[..., :width])

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor):
        B, _, H, W = images.shape
        if H != self.image_height:
            raise ValueError(f"PPOCREncoder: image height {H} != {self.image_height}")
        counts = self.token_counts(image_mask)
        n_max = max(counts)
        groups: dict[int, list[int]] = {}
        for b, n in enumerate(counts):
            groups.setdefault(n, []).append(b)
        width = n_max * self.stride
        if width > W:
            images = nn.functional.pad(images, (0, width - W))
            image_mask = nn.functional.pad(image_mask, (0, width - W))
        ink = images * image_mask[:, None, None, :].to(images.dtype)  # padding is blank paper
        out = images.new_zeros(B, n_max, self._d_out)
        inputs = [self.pixels(ink[idx, :, :, : n * self.stride]) for n, idx in groups.items()]
        if self._on_ort(images):  # the width groups side by side (OrtRunner.run_many)
            feats = self._ort.run_many(inputs)
        else:
            feats = [self.graph(x) for x in inputs]
        for (n, idx), f in zip(groups.items(), feats):  # f: [g, n, d]
            out[idx, :n] = f.to(out.dtype)
        mask = torch.arange(n_max, device=images.device)[None] < torch.tensor(counts, device=images.device)[:, None]
        return out, mask


def _row_pool(spec: dict) -> dict:
    """The AveragePool that folds the trunk's last rows into one token row (kernel height = stride height > 1)."""
    pools = [n for n in spec["nodes"] if n["op"] == "AveragePool" and len(n["attrs"].get("kernel_shape", [])) == 2
             and n["attrs"]["kernel_shape"][0] == n["attrs"].get("strides", [1, 1])[0] > 1]
    if len(pools) != 1:
        raise ConfigError(f"PP-OCR graph: expected one AveragePool over the rows, found {len(pools)}")
    return pools[0]


def _rows_into(graph: OnnxGraph, node: dict, height: int, channels: int) -> int:
    """How many rows reach `node` from a line `height` px high (ONNX shape inference)."""
    shapes = inferred_shapes(graph.to_onnx(), (1, channels, height, 64))
    shape = shapes.get(node["inputs"][0])
    if not shape or len(shape) != 4 or shape[2] < 1:
        raise ConfigError(f"PP-OCR graph: cannot tell how many rows a {height} px line leaves")
    return int(shape[2])


def read_at_height(encoder: PPOCREncoder, height: int) -> PPOCREncoder:
    """The encoder, in place, reading lines `height` px high, each as wide as before: its width_scale grows by
    old height / new, so a line keeps its frames per letter. Fewer rows cost proportionally less (32 px: 2/3 of
    the multiply-adds of 48 px). The convolutions are indifferent to the height; the pool that folds the last
    rows into one token is resized to the rows the new height leaves (PP-OCRv6: 3 at 48 px, 2 at 32 px).
    The weights do not change: a network trained at another height reads worse until it is fine-tuned
    (`encoder train --init`; docs/benchmarks.md "The encoder's cost")."""
    height = int(height)
    if height < 8:
        raise ConfigError(f"PP-OCR encoder: a height of {height} px leaves no rows to read")
    pool = _row_pool(encoder.graph.spec)
    rows = _rows_into(encoder.graph, pool, height, int(encoder.image["channels"]))
    kernel, strides = list(pool["attrs"]["kernel_shape"]), list(pool["attrs"]["strides"])
    kernel[0] = strides[0] = rows
    pool["attrs"].update(kernel_shape=kernel, strides=strides)
    old = encoder.image_height
    encoder.image.update(height=height, width_scale=float(encoder.image.get("width_scale", 1.0)) * old / height)
    encoder.cfg = replace(encoder.cfg, patch_height=height)
    encoder._ort = OrtRunner(encoder.graph)  # its sessions were built on the old graph
    return encoder


def _row_strided_convs(spec: dict) -> list[dict]:
    """The convolutions that halve the rows and keep the columns (strides [2, 1]), in graph order: the entries
    of the trunk's later stages (PP-OCRv6: stage 3, then stage 4)."""
    return [n for n in spec["nodes"] if n["op"] == "Conv" and list(n["attrs"].get("strides", [1, 1])) == [2, 1]]


def halve_columns_at(encoder: PPOCREncoder, stage: int = 1) -> PPOCREncoder:
    """The encoder, in place, halving its columns at the entry of a later stage instead of in the last pool.

    PP-OCR's trunk runs its later stages at 4 px per column and its final pool folds pairs of columns into the
    8-px token; those stages hold ~2/3 of the multiply-adds (docs/benchmarks.md, "The encoder's cost"). Moving
    the halving to the entry of the `stage`-th later stage (1: the first conv with strides [2, 1], PP-OCRv6's
    stage 3; 2: stage 4) runs everything after it at 8 px per column: the tokens stay one per 8 px, as many
    as before, and no weight changes shape, so the encoder fine-tunes from its old weights (`encoder train
    --init`) and averages with them (WiSE). Untrained it reads worse: each deep feature now sees every other
    column of the one before."""
    pool = _row_pool(encoder.graph.spec)
    if list(pool["attrs"]["kernel_shape"])[1] != 2 or list(pool["attrs"]["strides"])[1] != 2:
        raise ConfigError("PP-OCR graph: its last pool does not halve the columns (halved earlier already?)")
    convs = _row_strided_convs(encoder.graph.spec)
    if not 1 <= stage <= len(convs):
        raise ConfigError(f"PP-OCR graph: no stage {stage}; {len(convs)} later stage(s) halve the rows (count from 1)")
    convs[stage - 1]["attrs"]["strides"] = [2, 2]
    kernel, strides = list(pool["attrs"]["kernel_shape"]), list(pool["attrs"]["strides"])
    kernel[1] = strides[1] = 1
    pool["attrs"].update(kernel_shape=kernel, strides=strides)
    encoder._ort = OrtRunner(encoder.graph)  # its sessions were built on the old graph
    return encoder


def _branch(producer: dict, inits: set, tensor: str, skip: str, limit: int = 24) -> list[dict] | None:
    """The nodes computing `tensor` from `skip` (and initializers) alone, or None if it needs anything else
    (another input, or more than `limit` nodes: not a small branch)."""
    nodes, seen, todo = [], set(), [tensor]
    while todo:
        t = todo.pop()
        if t == skip or t in inits or t in seen or not t:
            continue
        seen.add(t)
        node = producer.get(t)
        if node is None or len(nodes) >= limit:
            return None
        if all(node is not n for n in nodes):
            nodes.append(node)
        todo.extend(node["inputs"])
    return nodes


def residual_mlps(spec: dict) -> list[dict]:
    """The trunk's residual MLPs in graph order: each `x + conv1x1(act(conv1x1(x)))`, as {"add": the Add that
    closes it, "skip": x, "nodes": its branch}. PP-OCRv6_rec_small has 11: 3 in stage 2 (96 channels, 192
    hidden), 6 in stage 3 (192, 384) and 2 in stage 4 (384, 768), together ~80 % of its multiply-adds."""
    producer = {o: n for n in spec["nodes"] for o in n["outputs"]}
    inits = set(spec.get("initializers", {}))
    found = []
    for node in spec["nodes"]:
        if node["op"] != "Add" or len(node["inputs"]) != 2 or any(i in inits for i in node["inputs"]):
            continue
        for skip, tensor in (node["inputs"], node["inputs"][::-1]):
            nodes = _branch(producer, inits, tensor, skip)
            convs = [n for n in nodes or [] if n["op"] == "Conv"]
            if (len(convs) == 2 and all(list(c["attrs"].get("kernel_shape", [])) == [1, 1] for c in convs)
                    and any(n["inputs"][0] == skip for n in convs)):
                found.append({"add": node, "skip": skip, "nodes": nodes})
                break
    return found


def _chosen_mlps(spec: dict, which) -> tuple[list[dict], list[int]]:
    """(the graph's residual MLPs, the chosen numbers sorted); a number the graph lacks is refused."""
    found = residual_mlps(spec)
    which = sorted({int(i) for i in which})
    bad = [i for i in which if not 1 <= i <= len(found)]
    if bad or not which:
        raise ConfigError(f"PP-OCR graph: no residual MLP {bad[0] if bad else '(none given)'}; it has "
                          f"{len(found)} (count from 1)")
    return found, which


def drop_mlps(encoder: PPOCREncoder, which, calibration=None, rank: int = 0) -> PPOCREncoder:
    """The encoder, in place, without some of its residual MLPs (`which`: their numbers in graph order, from 1;
    `residual_mlps`), the weights only those branches used gone.

    Why: a residual branch refines what passes by it, so the trunk without one still reads, where halving its
    columns or pruning channels breaks it (docs/benchmarks.md); each of PP-OCRv6's stage-4 MLPs is ~14 % of the
    trunk's multiply-adds, each of stage 3's ~7 %. Without `calibration` each `x + mlp(x)` becomes `x`. With it
    (network inputs [1, C, H, W], e.g. `pixels` of real lines), each becomes `x + up(down(x)) + b`, a linear
    map of rank `rank` (0: the bias alone) fitted by least squares, in graph order, so that each stands in for
    what the full trunk computed there from what the cut trunk now feeds it (`_fit_stand_in`). Either way it
    reads worse until fine-tuned (`encoder train --init --teacher`, the full trunk as the teacher)."""
    spec = encoder.graph.spec
    found, which = _chosen_mlps(spec, which)
    arrays = encoder.graph.arrays()
    if calibration is None:
        rename = {found[i - 1]["add"]["outputs"][0]: found[i - 1]["skip"] for i in which}

        def source(t: str) -> str:
            while t in rename:  # a dropped MLP's skip may be the output of another dropped one
                t = rename[t]
            return t

        nodes = [{**n, "inputs": [source(i) for i in n["inputs"]]} for n in spec["nodes"]
                 if n["outputs"][0] not in rename]
        outputs = [source(o) for o in spec["outputs"]]
    else:
        targets = _values(spec, arrays, [found[i - 1]["add"]["outputs"][0] for i in which], calibration)
        nodes, outputs = list(spec["nodes"]), list(spec["outputs"])
        for i, target in zip(which, targets):
            mlp = found[i - 1]
            branch = {id(n) for n in mlp["nodes"]} | {id(mlp["add"])}
            (x,) = _values({**spec, "nodes": nodes}, arrays, [mlp["skip"]], calibration)
            stand_in, new = _fit_stand_in(mlp, x, target, rank, f"mlp{i}_stand_in")
            at = next(k for k, n in enumerate(nodes) if n is mlp["add"])
            nodes = [n for n in nodes[:at] if id(n) not in branch] + stand_in + nodes[at + 1:]
            arrays.update(new)
    encoder.graph = OnnxGraph(prune_spec({**spec, "nodes": nodes}, outputs), arrays)  # keeps the arrays it uses
    encoder._ort = OrtRunner(encoder.graph)  # its sessions were built on the old graph
    return encoder


def _conv_bias(conv: dict, branch: list[dict], arrays: dict) -> tuple[str, int]:
    """(initializer, channel axis) of a conv's bias: its third input, or the constant an Add right after it adds
    (as PP-OCR's ONNX export writes it)."""
    if len(conv["inputs"]) > 2 and conv["inputs"][2]:
        return conv["inputs"][2], 0
    out = conv["outputs"][0]
    for node in branch:
        if node["op"] == "Add" and out in node["inputs"]:
            other = [i for i in node["inputs"] if i != out]
            if other and other[0] in arrays and arrays[other[0]].ndim == 4:
                return other[0], 1
    raise ConfigError(f"PP-OCR graph: conv {conv.get('name') or out} has no bias to re-fit")


def shrink_mlps(encoder: PPOCREncoder, which, keep: float, calibration) -> PPOCREncoder:
    """The encoder, in place, its residual MLPs `which` (numbers from 1, `residual_mlps`) narrowed to `keep`
    (0-1) of their hidden channels, each re-fitted so that it gives what the full trunk gave there.

    Channel pruning with least-squares reconstruction (He et al. 2017, "Channel pruning for accelerating very
    deep neural networks"; Luo et al. 2017, ThiNet): on the calibration inputs (network inputs, e.g. `line_input`
    of real lines), in graph order, each MLP keeps the hidden channels that carry most (mean |activation| x the
    norm of their output weights) and its output conv and bias are solved by least squares against the full
    trunk's output of that MLP, from what the narrowed trunk now feeds it. Why: an MLP's cost is proportional
    to its hidden width, and unlike cutting channels blind (docs/benchmarks.md: CER 1.0 at 25 %) the re-fit
    output keeps most of what the full branch computed, with no training."""
    spec = encoder.graph.spec
    found, which = _chosen_mlps(spec, which)
    if not 0 < keep <= 1:
        raise ConfigError(f"shrink_mlps: keep {keep} is not in (0, 1]")
    arrays = encoder.graph.arrays()
    targets = _values(spec, arrays, [found[i - 1]["add"]["outputs"][0] for i in which], calibration)
    for i, target in zip(which, targets):
        mlp = found[i - 1]
        first = next(n for n in mlp["nodes"] if n["op"] == "Conv" and n["inputs"][0] == mlp["skip"])
        second = next(n for n in mlp["nodes"] if n["op"] == "Conv" and n is not first)
        b1, b2 = _conv_bias(first, mlp["nodes"], arrays), _conv_bias(second, mlp["nodes"], arrays)
        x, hidden = _values(spec, arrays, [mlp["skip"], second["inputs"][0]], calibration)
        w2 = torch.from_numpy(arrays[second["inputs"][1]]).double()[:, :, 0, 0]  # [C, H]
        score = hidden.abs().mean(0) * w2.norm(dim=0)
        kept = score.topk(max(1, round(keep * len(score)))).indices.sort().values
        arrays[first["inputs"][1]] = arrays[first["inputs"][1]][kept.numpy()]
        arrays[b1[0]] = np.take(arrays[b1[0]], kept.numpy(), axis=b1[1])
        h = torch.cat([hidden[:, kept], torch.ones(len(hidden), 1, dtype=hidden.dtype)], dim=1)
        gram = h.T @ h
        ridge = 1e-3 * float(gram.diagonal()[:-1].mean()) * torch.eye(len(gram), dtype=gram.dtype)
        ridge[-1, -1] = 0.0  # the bias is not shrunk
        solved = torch.linalg.solve(gram + ridge, h.T @ (target - x))  # [k + 1, C]
        arrays[second["inputs"][1]] = solved[:-1].T.float().numpy()[:, :, None, None]
        arrays[b2[0]] = solved[-1].float().numpy().reshape(arrays[b2[0]].shape)
    encoder.graph = OnnxGraph(spec, arrays)  # the initializers' shapes are the new arrays'
    encoder._ort = OrtRunner(encoder.graph)  # its sessions were built on the old graph
    return encoder


@torch.no_grad()
def _values(spec: dict, arrays: dict, names: list[str], inputs) -> list[torch.Tensor]:
    """Each named tensor over every input, as [pixels, channels] rows (all inputs' positions stacked)."""
    graph = OnnxGraph(prune_spec(spec, names), arrays)
    rows: list[list[torch.Tensor]] = [[] for _ in names]
    for x in inputs:
        out = graph(x)
        for k, t in enumerate(out if isinstance(out, tuple) else (out,)):
            rows[k].append(t.movedim(1, -1).reshape(-1, t.shape[1]).double())
    return [torch.cat(r) for r in rows]


def _fit_stand_in(mlp: dict, x: torch.Tensor, target: torch.Tensor, rank: int, name: str):
    """Nodes computing `mlp`'s output as skip + up(down(skip)) + b (rank 0: skip + b), fitted so that it best
    matches `target` on the rows `x` of its input: least squares with a ridge of 1e-3 of the mean variance, cut
    to the best map of that rank for these inputs (reduced-rank regression). -> (nodes, new initializers)."""
    skip, out = mlp["skip"], mlp["add"]["outputs"][0]
    channels = x.shape[1]
    residual = target - x
    mean_x, mean_r = x.mean(0), residual.mean(0)
    if rank == 0:
        bias = {f"{name}.bias": mean_r.float().numpy().reshape(1, channels, 1, 1)}
        return [{"op": "Add", "inputs": [skip, f"{name}.bias"], "outputs": [out], "attrs": {}, "name": name}], bias
    xc, rc = x - mean_x, residual - mean_r
    gram = xc.T @ xc
    ridge = 1e-3 * float(gram.diagonal().mean())
    w = torch.linalg.solve(gram + ridge * torch.eye(channels, dtype=gram.dtype), xc.T @ rc)  # [C, C]
    _, _, vh = torch.linalg.svd(xc @ w, full_matrices=False)
    v = vh[: min(rank, channels)].T  # [C, r]: the directions the fitted residual varies most in
    down = w @ v  # x @ down @ v.T ~ x @ w
    new = {f"{name}.down": down.T.float().numpy()[:, :, None, None], f"{name}.up": v.float().numpy()[:, :, None, None],
           f"{name}.bias": (mean_r - mean_x @ down @ v.T).float().numpy()}
    conv = {"dilations": [1, 1], "kernel_shape": [1, 1], "strides": [1, 1], "group": 1, "pads": [0, 0, 0, 0]}
    return [{"op": "Conv", "inputs": [skip, f"{name}.down"], "outputs": [f"{name}.d"], "attrs": conv,
             "name": f"{name}.down"},
            {"op": "Conv", "inputs": [f"{name}.d", f"{name}.up", f"{name}.bias"], "outputs": [f"{name}.u"],
             "attrs": dict(conv), "name": f"{name}.up"},
            {"op": "Add", "inputs": [skip, f"{name}.u"], "outputs": [out], "attrs": {}, "name": name}], new


def map_ctc_head(weight: np.ndarray, bias: np.ndarray | None, classes: list[str], tokenizer,
                 upsample: int = 1) -> tuple[CTCHead, dict]:
    """PP-OCR's classifier (W [d, C], b [C], `classes[0]` = blank) as a CTCHead over the tokenizer's vocabulary:
    the rows of characters PP-OCR knows are kept (blank -> PAD = 0), the others start silent (zero weights,
    a low bias) for fine-tuning to teach. Returns (head, {"kept": n, "new": [chars]})."""
    d, _ = weight.shape
    w = torch.from_numpy(np.array(weight, dtype=np.float32)).t()  # [C, d]
    b = torch.from_numpy(np.array(bias, dtype=np.float32)) if bias is not None else torch.zeros(w.shape[0])
    index = {c: i for i, c in enumerate(classes) if i != BLANK}
    head = CTCHead(d, tokenizer.vocab_size, upsample)
    low = float(b.min()) - 5.0
    new_w = torch.zeros(upsample, tokenizer.vocab_size, d)
    new_b = torch.full((upsample, tokenizer.vocab_size), low)
    kept, new = 0, []
    specials = {tokenizer.bos_id, tokenizer.eos_id, getattr(tokenizer, "unk_id", None)}
    for tid in range(tokenizer.vocab_size):
        if tid == tokenizer.pad_id:
            src = BLANK
        elif tid in specials:
            continue
        else:
            ch = tokenizer.decode([tid])
            src = index.get(ch)
            if src is None:
                if ch:
                    new.append(ch)
                continue
        new_w[:, tid], new_b[:, tid] = w[src], b[src]
        kept += 1
    with torch.no_grad():  # proj rows are frame-major: row f * V + v
        head.proj.weight.copy_(new_w.reshape(upsample * tokenizer.vocab_size, d))
        head.proj.bias.copy_(new_b.reshape(-1))
    return head, {"kept": kept, "new": new}


def import_ppocr(onnx: str | Path | None = None, tokenizer=None, cfg: EncoderConfig | None = None):
    """Read PP-OCR's recogniser from an .onnx file (default: the rapidocr wheel's PP-OCRv6_rec_small) ->
    (PPOCREncoder, CTCHead mapped onto `tokenizer` or None, info)."""
    path = Path(onnx) if onnx else rapidocr_onnx_path()
    spec, inits, meta = spec_from_onnx(path)
    features, w_name, b_name = _feature_tap(spec)
    trunk = prune_spec(spec, [features])
    graph = OnnxGraph(trunk, inits)
    weight = inits[w_name]
    d = int(weight.shape[0])
    source = PROVENANCE if path.name == DEFAULT_ONNX else str(path)
    encoder = PPOCREncoder(graph, cfg or EncoderConfig(kind="ppocr"), d, source=source)
    classes = ["<blank>"] + meta.get("character", "").splitlines() + [" "]
    if len(classes) != weight.shape[1]:
        raise ConfigError(f"{path}: the `character` table has {len(classes) - 2} characters (+ blank, space) "
                          f"for a {weight.shape[1]}-way classifier")
    info = {"onnx": str(path), "classes": len(classes), "feature_tensor": features, "dim": d}
    head = None
    if tokenizer is not None:
        head, mapped = map_ctc_head(weight, inits.get(b_name) if b_name else None, classes, tokenizer)
        info.update(mapped)
    return encoder, head, info

