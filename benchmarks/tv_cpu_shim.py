"""Lets PyPI's torchvision import beside a CPU-only torch (installed by benchmarks/kraken_env.sh).

Why: kraken 7.1.1 imports torchvision; the only torchvision release that requires torch==2.13.0 (0.28.0) is
a CUDA build. Its `_C.so` fails to load against torch 2.13.0+cpu, and torchvision then registers fake
kernels for `torchvision::nms` / `torchvision::qnms` without checking the ops exist, so `import torchvision`
dies with "operator torchvision::nms does not exist". This module is imported at interpreter start by a
`.pth` file in site-packages; it watches for `torchvision._meta_registrations` and, if torchvision's C++
ops did not load, defines those two schemas first. The pure-Python parts (transforms, tv_tensors) then
import; torchvision's C++ ops (nms, roi_align, ...) stay unavailable, which kraken's line recognition
(training and inference) does not need. Not part of bridgeocr; do not install it into the project's env.
"""

import importlib.abc
import sys

_LIB = None


class _Finder(importlib.abc.MetaPathFinder):
    """Defines the op schemas just before torchvision registers fake kernels for them; finds nothing."""

    def find_spec(self, name, path, target=None):
        global _LIB
        if name == "torchvision._meta_registrations" and _LIB is None:
            import torch
            import torchvision.extension as ext

            if not ext._has_ops():
                _LIB = torch.library.Library("torchvision", "DEF")
                _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _Finder())
