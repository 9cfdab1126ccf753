"""Weight-space interpolation of two encoder directories of the same structure (WiSE-FT, Wortsman et al. 2022):
`theta = (1 - alpha) * theta_zero_shot + alpha * theta_fine_tuned`, CTC heads included.

Why: fine-tuning PP-OCR's recogniser on our lines (handwriting, typewriting) cost a little of what it read
before (clean print in unseen fonts); interpolating the weights keeps most of both, with no training.

usage: python scripts/interpolate_encoder.py ZERO_SHOT_DIR FINE_TUNED_DIR ALPHA OUT_DIR [--into OCR_DIR OCR_OUT]
  --into: also write a copy of an OCR model directory whose encoder (and CTC head) are the interpolated ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def interpolate(a: dict, b: dict, alpha: float) -> dict:
    if a.keys() != b.keys():
        raise SystemExit(f"the two encoders differ in structure: {sorted(a.keys() ^ b.keys())[:3]}")
    out = {}
    for k, va in a.items():
        vb = b[k]
        out[k] = ((1 - alpha) * va.float() + alpha * vb.float()).to(vb.dtype) if vb.is_floating_point() else vb
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("zero_shot")
    p.add_argument("fine_tuned")
    p.add_argument("alpha", type=float)
    p.add_argument("out")
    p.add_argument("--into", nargs=2, metavar=("OCR_DIR", "OCR_OUT"), default=None)
    a = p.parse_args(argv)
    zs, ft, out = Path(a.zero_shot), Path(a.fine_tuned), Path(a.out)
    tensors = interpolate(load_file(str(zs / "model.safetensors")), load_file(str(ft / "model.safetensors")), a.alpha)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json"):
        shutil.copy2(ft / name, out / name)
    card = {"made_by": "scripts/interpolate_encoder.py", "zero_shot": str(zs), "fine_tuned": str(ft), "alpha": a.alpha}
    if (ft / "encoder_card.json").is_file():
        card["fine_tuned_card"] = json.loads((ft / "encoder_card.json").read_text())
    (out / "encoder_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False))
    print(f"wrote {out} (alpha {a.alpha})")
    if a.into:
        src, dst = Path(a.into[0]), Path(a.into[1])
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        model = load_file(str(src / "model.safetensors"))
        for k, v in tensors.items():  # encoder.* and ctc_head.* carry the same names in both layouts
            if k not in model:
                raise SystemExit(f"{src}: has no tensor {k}: not built on this encoder")
            model[k] = v.to(model[k].dtype)
        save_file(model, str(dst / "model.safetensors"), metadata={"format": "pt"})
        print(f"wrote {dst}: {src} with the interpolated encoder and CTC head")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
