"""Checks for the files of a model directory: what does not match is refused with one BridgeOCRError naming the
file, never a traceback and never a model that silently reads wrong.

- `read_config_json(path)`: the JSON object in config.json (invalid JSON -> `path:LINE: not valid JSON (...)`).
- `config_value(meta, key, path, types)`: one required key of it, of the expected type.
- `safetensors_shapes(path)`: the tensor names and shapes in a safetensors file's header (a truncated or garbage
  file -> `path: not a safetensors file (truncated or corrupt)`).
- `load_state_checked(path, module)`: load a safetensors file into a module; missing, unexpected and wrong-shape
  tensors are listed in one message. Tied parameters (GPT's lm_head = wte, stored once) count as present when
  one of their names is. Float tensors of another float dtype (float16 shipped models) load upcast.
- `check_tokenizer_matches(tokenizer, vocab_size, where, ...)`: a tokenizer larger than the model's vocabulary,
  or of another size than the one the model was trained with, is refused.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

from bridgeocr.errors import BridgeOCRError

__all__ = ["read_config_json", "config_value", "safetensors_shapes", "read_safetensors", "load_state_checked",
           "check_state", "check_tokenizer_matches", "hf_weights_checked", "names_list"]

_MAX_NAMES = 3  # names listed in one message before "(N more)"


def names_list(names, limit: int = _MAX_NAMES) -> str:
    """`a, b, c (2 more)`."""
    names = sorted(names)
    text = ", ".join(names[:limit])
    return text + (f" ({len(names) - limit} more)" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------ config.json


def read_config_json(path: str | Path) -> dict:
    """The JSON object in `path`; missing, unreadable, invalid JSON or not an object -> BridgeOCRError."""
    path = Path(path)
    if not path.is_file():
        raise BridgeOCRError(f"{path}: missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BridgeOCRError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise BridgeOCRError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BridgeOCRError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise BridgeOCRError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


_TYPE_NAMES = {int: "an integer", dict: "an object", str: "a string", list: "a list", float: "a number",
               bool: "true or false"}


def config_value(meta: dict, key: str, path, types=int):
    """`meta[key]`, which must be present and of `types` (bools are not integers)."""
    if key not in meta:
        raise BridgeOCRError(f"{path}: missing key {key!r}")
    value = meta[key]
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise BridgeOCRError(f"{path}: key {key!r} should be {want}, got {json.dumps(value)[:40]}")
    if int in types and isinstance(value, int) and value <= 0 and key.endswith(("size", "height")):
        raise BridgeOCRError(f"{path}: key {key!r} should be positive, got {value}")
    return value


# ------------------------------------------------------------------------------------------ safetensors


def _corrupt(path) -> BridgeOCRError:
    return BridgeOCRError(f"{path}: not a safetensors file (truncated or corrupt)")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise BridgeOCRError(f"{path}: missing (the model's weights)")


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """name -> shape, from the header alone (checks the file is a whole safetensors file)."""

    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # SafetensorError (bad header, size mismatch), OSError, ...
        raise _corrupt(path) from None


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or garbage file -> BridgeOCRError naming it."""

    path = Path(path)
    _check_file(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception:
        raise _corrupt(path) from None


def _tied_groups(state: dict[str, torch.Tensor]) -> dict[str, set[str]]:
    """name -> every name of the state dict sharing its storage (tied parameters), itself included."""
    by_storage: dict[tuple, set[str]] = {}
    for name, t in state.items():
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        by_storage.setdefault(key, set()).add(name)
    return {n: group for group in by_storage.values() for n in group}


def _shape(s) -> str:
    return "[" + ", ".join(str(int(d)) for d in s) + "]"


def check_state(found: dict[str, tuple[int, ...]], module: nn.Module, where, dtypes: dict | None = None) -> None:
    """Compare a file's tensors (name -> shape) with the module's state dict: one BridgeOCRError listing the
    missing, unexpected and wrong-shape tensors (and float/integer dtype mix-ups when `dtypes` is given)."""
    expected = module.state_dict()
    tied = _tied_groups(expected)
    missing = [k for k in expected if k not in found and not (tied.get(k, {k}) & found.keys())]
    unexpected = [k for k in found if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing tensors {names_list(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {names_list(unexpected)}")
    wrong = sorted(k for k in found if k in expected and tuple(found[k]) != tuple(expected[k].shape))
    if wrong:
        shown = ", ".join(f"{k} is {_shape(found[k])} in the file, {_shape(expected[k].shape)} in the model"
                          for k in wrong[:_MAX_NAMES])
        more = f" ({len(wrong) - _MAX_NAMES} more)" if len(wrong) > _MAX_NAMES else ""
        problems.append(f"wrong shape: {shown}{more}")
    if dtypes:
        kinds = sorted(k for k, dt in dtypes.items() if k in expected
                       and dt.is_floating_point != expected[k].dtype.is_floating_point)
        if kinds:
            problems.append(f"wrong kind of numbers (float / integer): {names_list(kinds)}")
    if problems:
        raise BridgeOCRError(f"{where}: " + "; ".join(problems))


def load_state_checked(path: str | Path, module: nn.Module, device: str | torch.device = "cpu",
                       tensors: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Load the safetensors file `path` (or its already read `tensors`) into `module`, exactly: every
    tensor of the module present (tied ones once), none extra, every shape equal -- else one BridgeOCRError
    naming the file and what does not match. Stored float16 loads into float32 parameters."""
    path = Path(path)
    if tensors is None:
        tensors = read_safetensors(path, device)
    check_state({k: tuple(v.shape) for k, v in tensors.items()}, module, path,
                dtypes={k: v.dtype for k, v in tensors.items()})
    try:
        missing, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # anything check_state did not foresee
        raise BridgeOCRError(f"{path}: does not fit the model ({str(exc).splitlines()[-1].strip()})") from None
    tied = _tied_groups(module.state_dict())
    missing = [k for k in missing if not (tied.get(k, {k}) & tensors.keys())]
    if missing or unexpected:  # cannot happen after check_state; kept so a mismatch is never silent
        raise BridgeOCRError(f"{path}: missing tensors {names_list(missing)}; unexpected {names_list(unexpected)}")
    return module


@contextmanager
def hf_weights_checked(path: str | Path):
    """Around a transformers `from_pretrained(path)`: config.json must be valid JSON and every safetensors
    file a whole one (checked first); what transformers raises while loading becomes one BridgeOCRError
    naming the directory."""
    path = Path(path)
    read_config_json(path / "config.json")
    for weights in sorted(path.glob("*.safetensors")):
        safetensors_shapes(weights)
    try:
        yield
    except BridgeOCRError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BridgeOCRError(f"{path}: cannot load this Hugging Face model ({type(exc).__name__}: "
                             f"{first[:200]})") from None


# ------------------------------------------------------------------------------------------- tokenizer


def check_tokenizer_matches(tokenizer, vocab_size: int, where, *, exact: int | None = None,
                            exact_what: str = "the model was trained with a tokenizer of {n} tokens") -> None:
    """Refuse a tokenizer that does not fit the model: more tokens than the model's vocabulary (`vocab_size`,
    the decoder's embedding table; a padded table may be larger than the tokenizer), or another size than
    `exact` (the size the model was trained with, or its CTC head's classes) when that is known.
    `where`: the tokenizer's file, or a phrase for a tokenizer passed in."""
    n = int(tokenizer.vocab_size)
    if n > vocab_size:
        raise BridgeOCRError(f"{where}: {n} tokens, but the model's vocabulary is {vocab_size}")
    if exact is not None and n != int(exact):
        raise BridgeOCRError(f"{where}: {n} tokens, but {exact_what.format(n=int(exact))}")
