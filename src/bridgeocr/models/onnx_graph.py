"""An ONNX graph as a trainable torch module: the nodes run one by one with torch ops, the float weights are
`nn.Parameter`s, so a network that ships only as ONNX (PP-OCR's recogniser in the `rapidocr` wheel) can be
fine-tuned and saved as safetensors like any other bridgeocr part.

Why by hand: `onnx2torch` imports torchvision, which does not import beside the pinned CPU torch, and
onnxruntime's training API needs its own build. The executor covers the standard inference ops that
convolutional / transformer recognisers use (`OPS`); an unknown op is a one-line error naming the node.

The graph travels as a JSON-able *spec* (`graph_spec`: nodes, inputs, outputs, each initializer's name, shape
and dtype), so a saved model rebuilds its structure from config.json alone; `onnx` is needed only to read an
`.onnx` file in the first place (`spec_from_onnx`).

Conventions: BatchNormalization always uses its stored statistics (a frozen BN, as in detection/OCR
fine-tuning: small line batches give poor batch statistics, and an item's features must never depend on the
other items of its batch); its scale and bias stay trainable.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import math
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bridgeocr.errors import ConfigError

__all__ = ["OnnxGraph", "OrtRunner", "ort_session", "inferred_shapes", "spec_from_onnx", "prune_spec", "fuse_gelu", "OPS"]

# ------------------------------------------------------------------------------------------ reading ONNX


def _attr_value(attr) -> object:
    # lazy: onnx is an optional extra (`ppocr`), needed only to import a graph
    from onnx import helper, numpy_helper

    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    if hasattr(value, "dims"):  # a TensorProto (Constant's `value`)
        return numpy_helper.to_array(value)
    return value


def spec_from_onnx(path: str | Path) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    """An .onnx file -> (spec, initializers by name, metadata_props). Constant nodes become initializers."""
    # lazy: onnx is an optional extra (`ppocr`), needed only to import a graph
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # optional: only needed to import a network from an .onnx file
        raise ConfigError("reading an .onnx file needs the `onnx` package (pip install onnx)") from None
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            value = attrs.get("value")
            if value is None:
                for key in ("value_float", "value_int", "value_floats", "value_ints"):
                    if key in attrs:
                        value = np.asarray(attrs[key], dtype=np.float32 if "float" in key else np.int64)
            if value is None:
                raise ConfigError(f"{path}: Constant node {node.name or node.output[0]} has no supported value")
            inits[node.output[0]] = np.asarray(value)
            continue
        nodes.append({"op": node.op_type, "inputs": list(node.input), "outputs": list(node.output),
                      "attrs": attrs, "name": node.name})
    init_names = set(inits)
    spec = {"inputs": [i.name for i in graph.input if i.name not in init_names],
            "outputs": [o.name for o in graph.output], "nodes": nodes,
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=11)}
    meta = {p.key: p.value for p in model.metadata_props}
    return fuse_gelu(spec, inits), inits, meta


def _scalar(inits: dict, name: str) -> float | None:
    a = inits.get(name)
    return float(a) if a is not None and np.size(a) == 1 and np.issubdtype(np.asarray(a).dtype, np.floating) else None


def fuse_gelu(spec: dict, inits: dict[str, np.ndarray]) -> dict:
    """Exporters spell GELU as `x * (erf(x / sqrt 2) + 1) * 0.5` (five nodes, five passes over the tensor);
    one `Gelu` node (ONNX opset 20's op) computes the same with one torch kernel: on PP-OCRv6 that is ~a
    quarter of the CPU time. Only matches whose intermediate tensors nothing else reads are fused."""
    nodes = spec["nodes"]
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n["inputs"]:
            uses[i] = uses.get(i, 0) + 1
    for o in spec["outputs"]:
        uses[o] = uses.get(o, 0) + 1
    by_input: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in n["inputs"]:
            by_input.setdefault(i, []).append(k)

    def only_consumer(name: str, op: str):
        ks = by_input.get(name, [])
        return nodes[ks[0]] if uses.get(name) == 1 and len(ks) == 1 and nodes[ks[0]]["op"] == op else None

    def other(node, name):
        a, b = node["inputs"]
        return b if a == name else a

    drop, replace = set(), {}
    for k, div in enumerate(nodes):
        if div["op"] != "Div" or abs((_scalar(inits, div["inputs"][1]) or 0) - math.sqrt(2)) > 1e-4:
            continue
        x = div["inputs"][0]
        erf = only_consumer(div["outputs"][0], "Erf")
        add = erf and only_consumer(erf["outputs"][0], "Add")
        if not add or abs((_scalar(inits, other(add, erf["outputs"][0])) or 0) - 1.0) > 1e-6:
            continue
        mul = only_consumer(add["outputs"][0], "Mul")
        if not mul or other(mul, add["outputs"][0]) != x:
            continue
        half = only_consumer(mul["outputs"][0], "Mul")
        if not half or abs((_scalar(inits, other(half, mul["outputs"][0])) or 0) - 0.5) > 1e-6:
            continue
        group = [div, erf, add, mul, half]
        drop.update(id(n) for n in group)
        replace[id(div)] = {"op": "Gelu", "inputs": [x], "outputs": half["outputs"], "attrs": {},
                            "name": f"fused_gelu_{k}"}
    if not replace:
        return spec
    out = []
    for n in nodes:
        if id(n) in replace:
            out.append(replace[id(n)])
        elif id(n) not in drop:
            out.append(n)
    return {**spec, "nodes": out}


def prune_spec(spec: dict, outputs: Sequence[str]) -> dict:
    """The nodes needed to compute `outputs` (e.g. stop before a classifier head)."""
    need, keep = set(outputs), []
    for node in reversed(spec["nodes"]):
        if any(o in need for o in node["outputs"]):
            keep.append(node)
            need.update(i for i in node["inputs"] if i)
    known = {o for n in spec["nodes"] for o in n["outputs"]} | set(spec["inputs"])
    missing = [o for o in outputs if o not in known]
    if missing:
        raise ConfigError(f"ONNX graph: no tensor named {missing[0]!r}")
    return {**spec, "nodes": keep[::-1], "outputs": list(outputs),
            "inputs": [i for i in spec["inputs"] if i in need]}


# ------------------------------------------------------------------------------------------ the ops


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _same_pads(size: Sequence[int], kernel, strides, dilations, upper: bool) -> list[int]:
    """ONNX auto_pad SAME_*: per spatial axis (begin, end) so that out = ceil(in / stride)."""
    pads_begin, pads_end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        pads_begin.append(small if upper else total - small)
        pads_end.append(total - small if upper else small)
    return pads_begin + pads_end


def _pads(x, attrs, kernel) -> list[int]:
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, x2_end] for the spatial axes of x."""
    nd = len(kernel)
    strides = attrs.get("strides", [1] * nd)
    dilations = attrs.get("dilations", [1] * nd)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(x.shape[2:], kernel, strides, dilations, auto == "SAME_UPPER")
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(attrs.get("pads", [0] * (2 * nd)))


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, e1, e2] -> F.pad's (last axis first) [b2, e2, b1, e1]."""
    nd = len(pads) // 2
    out = []
    for axis in reversed(range(nd)):
        out += [pads[axis], pads[axis + nd]]
    return out


def _conv(x, w, b=None, **a):
    kernel = list(w.shape[2:])
    pads = _pads(x, a, kernel)
    nd = len(kernel)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    strides, dil, group = a.get("strides", [1] * nd), a.get("dilations", [1] * nd), a.get("group", 1)
    if pads[:nd] == pads[nd:]:
        return conv(x, w, b, strides, pads[:nd], dil, group)
    return conv(F.pad(x, _torch_pad(pads)), w, b, strides, 0, dil, group)


def _pool(x, kind: str, **a):
    kernel = a["kernel_shape"]
    nd = len(kernel)
    strides = a.get("strides", [1] * nd)
    pads = _pads(x, a, kernel)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        if pads[:nd] != pads[nd:] or any(p > k // 2 for p, k in zip(pads, kernel * 2)):
            x, pads = F.pad(x, _torch_pad(pads), value=-math.inf), [0] * (2 * nd)
        fn = {1: F.max_pool1d, 2: F.max_pool2d}[nd]
        return fn(x, kernel, strides, pads[:nd], a.get("dilations", [1] * nd), ceil)
    include = bool(a.get("count_include_pad", 0))
    if any(pads):
        if pads[:nd] != pads[nd:] or not include:  # pad by hand; count real cells only unless asked
            ones = torch.ones_like(x[:1, :1])
            xs, cnt = F.pad(x, _torch_pad(pads)), F.pad(ones, _torch_pad(pads), value=1.0 if include else 0.0)
            fn = {1: F.avg_pool1d, 2: F.avg_pool2d}[nd]
            return fn(xs, kernel, strides, 0, ceil) / fn(cnt, kernel, strides, 0, ceil).clamp(min=1e-12)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d}[nd]
    return fn(x, kernel, strides, pads[:nd], ceil, include)


def _axes(a, extra, ndim) -> list[int] | None:
    axes = a.get("axes")
    if axes is None and extra:
        axes = _ints(extra[0])
    return None if axes is None else [ax % ndim for ax in axes]


def _reduce_mean(x, *extra, **a):
    axes = _axes(a, extra, x.dim())
    keep = bool(a.get("keepdims", 1))
    if axes is None or len(axes) == 0:
        return x.mean() if not keep else x.mean(dim=tuple(range(x.dim())), keepdim=True)
    return x.mean(dim=tuple(axes), keepdim=keep)


def _reshape(x, shape, **a):
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _squeeze(x, *extra, **a):
    axes = _axes(a, extra, x.dim())
    if axes is None:
        return x.squeeze()
    for ax in sorted(axes, reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(x, *extra, **a):
    axes = a.get("axes")
    if axes is None:
        axes = _ints(extra[0])
    out_dim = x.dim() + len(axes)
    for ax in sorted(ax % out_dim for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _slice(x, starts, ends, axes=None, steps=None, **_):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise ConfigError(f"ONNX Slice with step {st} is not supported")
        n = x.shape[ax]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[ax % x.dim()] = slice(s, e)
    return x[tuple(index)]


def _batch_norm(x, scale, bias, mean, var, **a):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


def _gemm(a_, b_, c=None, **a):
    if a.get("transA", 0):
        a_ = a_.t()
    if a.get("transB", 0):
        b_ = b_.t()
    y = a.get("alpha", 1.0) * (a_ @ b_)
    return y if c is None else y + a.get("beta", 1.0) * c


def _flatten(x, **a):
    axis = a.get("axis", 1) % max(1, x.dim())
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _softmax(x, **a):
    return torch.softmax(x, dim=a.get("axis", -1))


def _cast(x, **a):
    to = a["to"]  # ONNX TensorProto dtypes: 1 float, 6 int32, 7 int64, 9 bool, 10 float16, 11 double
    dtype = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16,
             11: torch.float64}.get(to)
    if dtype is None:
        raise ConfigError(f"ONNX Cast to type {to} is not supported")
    return x.to(dtype)


OPS: dict[str, Callable] = {
    "Identity": lambda x, **_: x,
    "Add": lambda a, b, **_: a + b,
    "Sub": lambda a, b, **_: a - b,
    "Mul": lambda a, b, **_: a * b,
    "Div": lambda a, b, **_: a / b,
    "Pow": lambda a, b, **_: torch.pow(a, b),
    "Sqrt": lambda x, **_: torch.sqrt(x),
    "Erf": lambda x, **_: torch.erf(x),
    "Exp": lambda x, **_: torch.exp(x),
    "Tanh": lambda x, **_: torch.tanh(x),
    "Gelu": lambda x, **a: F.gelu(x, approximate="tanh" if a.get("approximate") == "tanh" else "none"),
    "Relu": lambda x, **_: F.relu(x),
    "Sigmoid": lambda x, **_: torch.sigmoid(x),
    "HardSigmoid": lambda x, **a: torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda x, **_: F.hardswish(x),
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "MaxPool": lambda x, **a: _pool(x, "max", **a),
    "AveragePool": lambda x, **a: _pool(x, "avg", **a),
    "GlobalAveragePool": lambda x, **_: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "ReduceMean": _reduce_mean,
    "MatMul": lambda a, b, **_: torch.matmul(a, b),
    "Gemm": _gemm,
    "Softmax": _softmax,
    "Transpose": lambda x, **a: x.permute(a.get("perm", list(range(x.dim()))[::-1])),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Concat": lambda *xs, **a: torch.cat(xs, dim=a["axis"]),
    "Shape": lambda x, **_: torch.tensor(list(x.shape), dtype=torch.int64, device=x.device),
    "Gather": lambda x, i, **a: torch.index_select(x, a.get("axis", 0), i.reshape(-1).long()).reshape(
        x.shape[:a.get("axis", 0)] + i.shape + x.shape[a.get("axis", 0) + 1:]),
    "Cast": _cast,
}


# ------------------------------------------------------------------------------------------ the module


def _key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


class OnnxGraph(nn.Module):
    """Runs an ONNX graph spec with torch ops. Float initializers with more than one element are trainable
    parameters (BatchNormalization's running mean/variance excepted); scalars and integer tensors (shapes,
    axes) are buffers. `forward(*inputs)` returns the spec's outputs (one tensor, or a tuple)."""

    def __init__(self, spec: dict, initializers: dict[str, np.ndarray] | None = None,
                 shapes: dict[str, dict] | None = None):
        super().__init__()
        for node in spec["nodes"]:
            if node["op"] not in OPS:
                raise ConfigError(f"ONNX op {node['op']} (node {node.get('name') or node['outputs'][0]}) "
                                  f"is not supported (supported: {', '.join(sorted(OPS))})")
        used = {i for n in spec["nodes"] for i in n["inputs"] if i}
        stats = {n["inputs"][k] for n in spec["nodes"] if n["op"] == "BatchNormalization" for k in (3, 4)}
        if initializers is not None:
            shapes = {name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                      for name, a in initializers.items() if name in used}
        if shapes is None:
            raise ValueError("OnnxGraph needs initializers or their shapes")
        self.spec = {k: v for k, v in spec.items() if k != "initializers"}
        self.spec["initializers"] = shapes
        self.params = nn.ParameterDict()
        self.consts: dict[str, str] = {}  # initializer name -> buffer name
        self.names: dict[str, str] = {}  # initializer name -> parameter key
        for name, info in shapes.items():
            dtype = _DTYPES.get(info["dtype"])
            if dtype is None:
                raise ConfigError(f"ONNX initializer {name}: dtype {info['dtype']} is not supported")
            value = (torch.from_numpy(np.array(initializers[name])).to(dtype) if initializers is not None
                     else torch.zeros(info["shape"], dtype=dtype))
            key = _key(name)
            if dtype.is_floating_point and value.numel() > 1 and name not in stats:
                self.params[key] = nn.Parameter(value.float())
                self.names[name] = key
            else:
                buf = "c_" + key
                self.register_buffer(buf, value.float() if dtype.is_floating_point else value)
                self.consts[name] = buf

    def forward(self, *inputs: torch.Tensor):
        env: dict[str, torch.Tensor] = dict(zip(self.spec["inputs"], inputs))
        for name, key in self.names.items():
            env[name] = self.params[key]
        for name, buf in self.consts.items():
            env[name] = getattr(self, buf)
        for node in self.spec["nodes"]:
            args = [env[i] if i else None for i in node["inputs"]]
            while args and args[-1] is None:  # trailing optional inputs left empty
                args.pop()
            try:
                out = OPS[node["op"]](*args, **node["attrs"])
            except ConfigError:
                raise
            except Exception as exc:
                raise RuntimeError(f"ONNX node {node.get('name') or node['outputs'][0]} ({node['op']}): "
                                   f"{exc}") from exc
            env[node["outputs"][0]] = out
        outs = tuple(env[o] for o in self.spec["outputs"])
        return outs[0] if len(outs) == 1 else outs

    # --------------------------------------------------------------------------- back to ONNX

    def to_onnx(self):
        """The graph with its *current* weights as an onnx ModelProto (needs `onnx`): a fine-tuned network
        runs in onnxruntime, or in any tool that reads ONNX. A fused `Gelu` below opset 20 is written as
        onnxruntime's `com.microsoft` Gelu (the same function)."""
        from onnx import TensorProto, helper, numpy_helper  # lazy: onnx is an optional extra (`ppocr`)

        opset = int(self.spec.get("opset", 11))
        nodes = [helper.make_node(n["op"], n["inputs"], n["outputs"], name=n.get("name") or None,
                                  domain="com.microsoft" if n["op"] == "Gelu" and opset < 20 else "",
                                  **n["attrs"]) for n in self.spec["nodes"]]
        inits = [numpy_helper.from_array(a, name) for name, a in self.arrays().items()]
        graph = helper.make_graph(
            nodes, "bridgeocr", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in self.spec["inputs"]],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in self.spec["outputs"]], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                       helper.make_opsetid("com.microsoft", 1)])

    def arrays(self) -> dict[str, np.ndarray]:
        """Every initializer's *current* value in its ONNX dtype (what `OnnxGraph(spec, arrays)` rebuilds from)."""
        out = {}
        for name, info in self.spec["initializers"].items():
            t = self.params[self.names[name]] if name in self.names else getattr(self, self.consts[name])
            out[name] = t.detach().cpu().numpy().astype(info["dtype"])
        return out

    def weights_version(self) -> tuple:
        """Changes whenever a weight is replaced or modified in place (an optimizer step, a load)."""
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))


def ort_session(model_bytes: bytes, threads: int, profile: bool = False):
    """An onnxruntime CPU session over a serialised model, as bridgeocr runs its graphs: `threads` intra-op
    threads that do not busy-wait between runs (`profile`: onnxruntime's own profiling on)."""
    import onnxruntime as ort  # lazy: an optional extra, used only where `OrtRunner.available()`

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # no busy-waiting between runs: onnxruntime's threads spin after each call by default, and here the torch
    # side (connector, CTC head, GPT search) runs on the same cores right after it; the spin took a core from
    # it (without it, on 2 cores: --fast at batch 1 1.5-1.7x faster, the default joint decoding 1.1-1.2x;
    # docs/benchmarks.md)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = profile
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def inferred_shapes(model, input_shape: Sequence[int]) -> dict[str, list[int]]:
    """Every intermediate tensor's shape (ONNX shape inference) when the model's first input has `input_shape`;
    the model itself is left as it is."""
    import onnx  # lazy: an optional extra (`ppocr`)
    from onnx import shape_inference

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    del dims[:]
    for d in input_shape:
        dims.add().dim_value = int(d)
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in shape_inference.infer_shapes(fixed).graph.value_info}


def conv_macs(model, input_shape: Sequence[int]) -> dict[str, float]:
    """Multiply-accumulates of each convolution (by its output tensor's name) when the model's first input has
    `input_shape` (ONNX shape inference): what a restructured trunk saves, per node."""
    shapes = inferred_shapes(model, input_shape)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    return {node.output[0]: float(np.prod(shapes[node.output[0]]) * np.prod(weights[node.input[1]][1:]))
            for node in model.graph.node if node.op_type == "Conv" and node.output[0] in shapes
            and node.input[1] in weights}


@functools.cache
def _ort_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


class OrtRunner:
    """An onnxruntime session over an OnnxGraph's current weights, rebuilt when they change: the frozen
    encoder's fast path (onnxruntime runs PP-OCR's graph ~2.5x faster than the node-by-node torch executor
    on a CPU). `available()` is False without onnxruntime or `onnx`, or with BRIDGEOCR_ORT=0.

    `run_many` runs several inputs (a batch's width groups) at once, one single-threaded session call per
    worker thread, as many workers as torch has threads: one input at a time on two threads spends part of
    each convolution waiting for the other thread; two inputs side by side do not (on 2 cores, 32 lines of
    400-1,200 px: ~1.25x the lines/s, docs/benchmarks.md "Encoder")."""

    def __init__(self, graph: OnnxGraph):
        self.graph = graph
        self.sessions: dict[int, object] = {}  # intra-op threads -> session over the weights of `version`
        self.version = None
        self._pool, self._workers, self._pid = None, 0, os.getpid()
        self._replacement: bytes | None = None  # replaced_by's model

    def __deepcopy__(self, memo) -> OrtRunner:
        """A copy of the encoder gets a runner of its own over the copied graph; sessions and worker threads
        are not copied (neither can be), they are built again on first use."""
        return OrtRunner(copy.deepcopy(self.graph, memo))

    @staticmethod
    def available() -> bool:
        return os.environ.get("BRIDGEOCR_ORT", "1") != "0" and _ort_installed()

    def _own_process(self) -> None:
        """A forked process has none of the sessions' or the workers' threads: it makes its own."""
        if self._pid != os.getpid():
            self.sessions, self.version, self._pool, self._workers = {}, None, None, 0
            self._pid = os.getpid()

    def _session(self, threads: int):
        self._own_process()
        if self._replacement is None:
            version = self.graph.weights_version()
            if version != self.version:
                self.sessions, self.version = {}, version
        if threads not in self.sessions:
            model = self._replacement or self.graph.to_onnx().SerializeToString()
            self.sessions[threads] = ort_session(model, threads)
        return self.sessions[threads]

    @contextlib.contextmanager
    def replaced_by(self, model_bytes: bytes):
        """Run this serialised model instead of the graph while the block lasts (a benchmark's quantised or
        edited copy, read through the same encoder, batching and decoding); the graph's own sessions after."""
        saved = self.sessions, self.version
        self.sessions, self._replacement = {}, model_bytes
        try:
            yield self
        finally:
            self.sessions, self.version = saved
            self._replacement = None

    def _run(self, session, x: torch.Tensor) -> torch.Tensor:
        (out,) = session.run(None, {self.graph.spec["inputs"][0]: x.detach().float().cpu().numpy()})
        return torch.from_numpy(out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._session(torch.get_num_threads()), x)

    def run_many(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """`[self(x) for x in xs]`, the inputs spread over `torch.get_num_threads()` single-threaded calls."""
        threads = torch.get_num_threads()
        if threads <= 1 or len(xs) <= 1:
            return [self(x) for x in xs]
        session = self._session(1)  # (after a fork, the pool is gone too)
        if self._workers != threads:  # a new thread count: a pool that size
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool, self._workers = ThreadPoolExecutor(threads, thread_name_prefix="bridgeocr-ort"), threads
        order = sorted(range(len(xs)), key=lambda i: -xs[i].numel())  # the largest first: even finishing times
        outs = dict(zip(order, self._pool.map(lambda i: self._run(session, xs[i]), order)))
        return [outs[i] for i in range(len(xs))]
