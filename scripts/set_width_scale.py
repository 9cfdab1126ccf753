"""Record the width scale a model reads its lines at, in its config.json (no weights change).

usage: python scripts/set_width_scale.py DIR [DIR ...] --scale 1.25

An encoder directory gets it in its "image" settings (what `encoder_image_config` and training read); an
OCR model directory in its encoder's "image" and in its own top-level "image" (what reading uses), which is
filled from training.json when the model has none yet. Step 5d of scripts/make_shipped.sh; the scale was
chosen on validation sets (docs/reading.md section 7).
"""

import argparse
import json
from pathlib import Path

from bridgeocr.models.load import TRAINING_META, reading_image_config
from bridgeocr.models.ocr import image_config_from


def set_scale(path: Path, scale: float) -> str:
    cfg_file = path / "config.json"
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") == "bridgeocr-encoder":
        meta.setdefault("image", {})["width_scale"] = scale
    else:
        if isinstance(meta.get("encoder", {}).get("image"), dict):
            meta["encoder"]["image"]["width_scale"] = scale
        training = path / TRAINING_META
        trained = json.loads(training.read_text()).get("image") if training.is_file() else None
        image = reading_image_config(image_config_from(meta.get("image")), trained, meta.get("image_height", 32),
                                     meta.get("model", {}).get("encoder", {}).get("patch_width", 8))
        meta["image"] = {**vars(image), "width_scale": scale}
    cfg_file.write_text(json.dumps(meta, indent=2))
    return f"{cfg_file}: width_scale {scale}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--scale", type=float, required=True)
    args = ap.parse_args()
    for d in args.dirs:
        print(set_scale(d, args.scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
