"""Copy the trained parts from runs/shipped/ into the package as float16, with their model cards.

usage: python scripts/ship.py [gpt_lm] [encoder_vit] [encoder_ctc] [ocr_default]   (default: all that exist)
The numbers in each card come from the run's own card JSON; the text below says how it was made
(scripts/make_shipped.sh has the commands in order).
"""

import sys
from pathlib import Path

from bridgeocr.shipped import SHIPPED_DIR, export_shipped

RUNS = Path("runs/shipped")
HARDWARE = "2 shared CPU cores (other jobs were running on the same machine), float32, no GPU"

PARTS = {
    "gpt_lm": (RUNS / "gpt_lm", "gpt_lm: the shipped GPT language model, taught to read a prefix", f"""
A 3-block GPT (GPT-2 architecture, width 192, 3 heads, 1.49 M parameters) pretrained as a character-level
causal language model on English text lines, and taught *prefix reading* (`lm train --prefix-read`): on part
of its batches it writes a line while its prefix holds a noisy copy of that line in its own embedding space
-- stretched over 1-3 tokens per character with CTC-like blanks, or collapsed to one token per character with
swaps, drops and insertions (`train/prefix_reading.py`). It is the OCR decoder's starting point (it reads the
`ctc_collapse` / `ctc_embed` connectors' output from the first step) and the KD teacher (its text-only path).
Its config carries `bridgeocr_prefix_positions: true`: visual token i gets position embedding i.

- Data: 14 Project Gutenberg books (bridgeocr's shared `gutenberg_en/train.txt`, public domain in the USA)
  cut into 15-80 character lines, each read as `<bos> line <eos>`; validation: the 2 held-out books' lines.
- Tokenizer: characters (279 symbols of the corpus + `<pad>` `<bos>` `<eos>` `<unk>`), `tokenizer.json`.
- Hardware: {HARDWARE}.
- Command: step 1 of `scripts/make_shipped.sh`, four legs: the plain LM (`bridgeocr lm train --line-mode`,
  1,269 steps, 40 min, val ppl 5.15), then `--init` from the previous leg with `--prefix-read`: 1,894 steps
  (20 min, stretched prefixes), 450 steps (5 min, + CTC-like blanks), 1,169 steps (15 min, + collapsed
  prefixes; the numbers below are this last leg's). 81 CPU minutes in all.
- Reading, measured on 256 held-out lines (`benchmarks/prefix_reading.py`, nats per character; plain LM
  1.68): collapsed clean prefix 0.25, collapsed with 10% swaps 0.38, collapsed with the default noise 0.46,
  stretched with the default noise 0.37 (stretched without blanks or noise, never seen in training: 1.29).
  It is not yet a lossless copier; 14 more minutes of prefix reading lowered its reading loss but not the
  demo's CER (docs/reading.md).
"""),
    "encoder_vit": (RUNS / "encoder_ctc2", "encoder_vit: the small CTC-pretrained ViT line encoder (the demo's; "
                    "shipped:encoder_ctc before PP-OCR)", f"""
The line encoder (conv stem + ViT, 4 blocks of width 192, rectangular 32 x 8 px patches on 32 px lines, 3
CTC frames per token) with its CTC head, trained with CTC so that it reads before it meets a GPT.
`model.encoder.pretrained=shipped:encoder_vit` loads it (and its head with `model.ctc_head=true`).

- Data: 22,080 + 12,000 synthetic lines (`bridgeocr data synth` on Gutenberg text, seeds 7 and 8, 97 fonts
  of which 19 handwriting-style) + 5,248 lines of Joseph Hooker's letters (Hooker HTR train split,
  CC-BY-SA 4.0, Schaefer & Litvine 2023); validation: 960 held-out synthetic lines.
- Tokenizer: the shipped GPT's characters (blank = `<pad>` = 0).
- Hardware: {HARDWARE}.
- Command: steps 2-3 of `scripts/make_shipped.sh`, two runs. First 4,000 steps of 32 lines on the seed-7
  lines + Hooker, AdamW, peak LR 1e-3, 36 minutes (warm-started from a 200-step run with a 1-frame CTC head,
  which could not align lines with fewer 8 px tokens than letters): val CER 0.117. Then continued from it
  (`model.encoder.pretrained=`, a fresh optimizer and schedule) for 4,500 steps at peak LR 5e-4 with the
  seed-8 lines added; the numbers below are this second run's (its `time_s` counts it alone).
- `val_cer_ctc_greedy` below: CER of greedy CTC decoding (no language model) on all 960 validation lines.
"""),
    "encoder_ctc": (RUNS / "encoder_ft2w", "encoder_ctc: PP-OCRv6's recogniser as a bridgeocr encoder, fine-tuned",
                    f"""
PP-OCRv6_rec_small (PaddleOCR; PPLCNetV4 backbone + SVTR neck, 3.0 M parameters without its classifier) as a
trainable bridgeocr encoder (`models/ppocr.py`, `docs/encoders.md`): its 120-d neck features are the visual
tokens (one per 8 px of a 48 px line), its CTC classifier mapped onto the shipped GPT's characters is the CTC
head, fine-tuned with CTC by bridgeocr. `model.encoder.pretrained=shipped:encoder_ctc` loads it (and its head
with `model.ctc_head=true`); lines are read 48 px high (its config.json says so; training and reading follow).

- Provenance and licence: the weights come from `rapidocr/models/PP-OCRv6_rec_small.onnx` in the
  `rapidocr==3.10.0` wheel (PyPI; RapidAI, Apache-2.0; the wheel's `MODEL_LICENSES.md` covers the model
  files: PaddleOCR's PP-OCR models, Apache-2.0), read with `bridgeocr encoder import`. Nothing is downloaded.
- Data: 11,640 synthetic 48 px lines (`bridgeocr data synth`, Gutenberg train text, seed 11, the 97 CI fonts
  of which 19 handwriting-style), 7,600 more in the 19 handwriting fonts alone (seed 12; second round only),
  5,248 Hooker train lines (CC-BY-SA 4.0, Schaefer & Litvine 2023) and 1,105 EHRI typewritten lines from 34
  train pages (CC-BY 4.0, cut from their ALTO by `scripts/alto_lines.py`, listed twice), augmented as scans
  (`--augment handwriting`). No benchmark-only font rendered a training line.
- Hardware: {HARDWARE}.
- Made in two rounds, each a fine-tune followed by a weight average (WiSE-FT, `scripts/interpolate_encoder.py`;
  step 4 of `scripts/make_shipped.sh`):
  1. `bridgeocr encoder train --init ppocr`, AdamW, peak LR 3e-4, 800 steps of 16 lines (49 min), selected on
     Hooker val; then the average of the zero-shot and the fine-tuned weights (alpha 0.5): fine-tuning alone
     cost clean print in unseen fonts (CER 0.0023 zero-shot -> 0.0112), the average kept most of both.
  2. From round 1's average, `--init` with the handwriting-font lines added, peak LR 1e-4, 1,000 steps of 16
     lines (54 min), selected on the handwriting lines' val split; then the average of round 1's and round 2's
     weights (alpha 0.5). Greedy CTC, round 1 -> round 2's average, on lines none of it trained on: held-out
     print fonts 0.0036 -> 0.0030, held-out handwriting fonts 0.2051 -> 0.2036, EHRI test pages 0.0169 ->
     0.0145, Hooker val 0.389 -> 0.329 (300 lines each; `docs/benchmarks.md`, "A second fine-tuning round").
- Read wider: its config.json says `width_scale: 1.25` (every line stretched 1.25x before the trunk; step 5d),
  and a line whose greedy CTC path still fills more than 0.65 of its frames is read again wider
  (`model.widen_crowded`). One frame per 8 px is fewer frames than letters for narrow hands. Chosen on
  validation sets (`docs/reading.md` section 7). Greedy CTC on lines none of it trained on, read as is -> read
  wider: held-out print fonts 0.0030 -> 0.0020, held-out handwriting fonts 0.2036 -> 0.1651, EHRI test 0.0145
  -> 0.0130, the demo's test lines 0.0262 -> 0.0141.
- `encoder_card.json`: the average's inputs (`zero_shot` is round 1's average, `fine_tuned` round 2's run) and
  round 2's training card (`fine_tuned_card`, its `val_cer_ctc_greedy` on the handwriting val lines).
"""),
    "ocr_default": (RUNS / "ocr_default_ft2w", "ocr_default: the shipped OCR model", f"""
The PP-OCR-based encoder (`shipped:encoder_ctc`, frozen) and the shipped GPT (`shipped:gpt_lm`) joined by
bridgeocr's `ctc_collapse` connector (the encoder's CTC reading, one GPT embedding per character,
`docs/reading.md`), trained with CE + CTC (0.5): what `bridgeocr recognize` uses without `--checkpoint`. It
reads 48 px lines, stretched 1.25x wider (`image.width_scale` in its config.json; crowded lines read again
wider, `model.widen_crowded` 0.65: `docs/reading.md` section 7), with joint CTC / GPT beam search (`decoding:
joint`; beam 4, CTC weight 0.5, `models/joint_decoding.py`), searching only the lines where the GPT does not
accept the CTC head's reading whole (`model.joint_draft`; `--full-search`: every line); `--ctc` is the fast path,
`--gpt` the GPT alone.

- Weights: the encoder's are PP-OCRv6_rec_small's (PaddleOCR, Apache-2.0, from the rapidocr==3.10.0 wheel,
  Apache-2.0, `MODEL_LICENSES.md`) as fine-tuned by bridgeocr; the GPT's and the connector's are bridgeocr's.
- Data: the 48 px synthetic Gutenberg lines (seed 11), Hooker train and EHRI train lines above, interleaved
  (`scripts/mixed_manifest.py`); selection by greedy GPT CER on 300 mixed validation lines.
- Hardware: {HARDWARE}.
- Command: step 5 of `scripts/make_shipped.sh` (`bridgeocr train --config configs/ocr_default.yaml`), 20
  minutes of training (1,125 steps of 16 lines) on the round-1 fine-tuned encoder; then its encoder and CTC
  head replaced by `shipped:encoder_ctc`'s (the connector reads the CTC head's output, so an encoder with the
  same head vocabulary drops in). Joint decoding, 300 lines each, before (round 1's encoder) -> now: held-out
  print fonts 0.0029 -> 0.0019, held-out handwriting fonts 0.192 -> 0.187, Hooker val 0.333 -> 0.285, EHRI val
  0.016 -> 0.013, EHRI test 0.017 -> 0.013.
- Then read wider (step 5d, no weights changed): held-out print fonts 0.0019 -> 0.0015, held-out handwriting
  fonts 0.187 -> 0.155, Hooker val 0.285 -> 0.280, EHRI val 0.0132 -> 0.0103, EHRI test 0.0133 -> 0.0126, the
  demo's test lines 0.0211 -> 0.0159 (`docs/benchmarks.md`, "Read wider").
- Evaluations on sets none of it trained on (held-out fonts, Hooker val, EHRI pages it never saw), next to
  PP-OCRv6 and Tesseract: `docs/benchmarks.md`, "PP-OCR encoder" and "A second fine-tuning round".
"""),
    "ocr_fast": (RUNS / "ocr_default_h32", "ocr_fast: the shipped OCR model reading 32 px lines (1.2-1.5x the lines/s)",
                 """
`shipped:ocr_default` with its encoder re-targeted to 32 px lines and fine-tuned there: the PP-OCR trunk does
two thirds of the multiply-adds of 48 px lines (issue 15, `docs/benchmarks.md` "A 32 px model"). The same GPT,
connector, decoding (joint CTC / GPT, beam 4, draft first) and vocabulary; each line is read as wide as before
(`image.width_scale` 1.875 at 32 px = 1.25 at 48 px), crowded lines again wider (`model.widen_crowded` 0.65).
`bridgeocr recognize --checkpoint shipped:ocr_fast`; `@ctc` / `--ctc` reads with its CTC head alone.

- When to use it: print and typewriting (as accurate as ocr_default or better on the sets below, 1.4-1.5x the
  lines/s) and when speed matters more than the last errors on unfamiliar handwriting styles: on handwriting
  fonts no training line used it makes ~6 % more errors than ocr_default.
- Weights: the encoder's are PP-OCRv6_rec_small's (PaddleOCR, Apache-2.0, from the rapidocr==3.10.0 wheel,
  Apache-2.0, `MODEL_LICENSES.md`) as fine-tuned by bridgeocr; the GPT's and the connector's are ocr_default's.
- Hardware: 2 CPU cores, float32, no GPU.
- Command: step 5e of `scripts/make_shipped.sh`. `scripts/read_at_height.py` re-targets shipped:encoder_ctc to
  32 px (the AveragePool over the last rows resized from 3 to 2 rows; no weight changes); `bridgeocr encoder
  train --init` on round 2's data (48 px synthetic print + handwriting-font lines, Hooker train, EHRI train
  twice, `--augment handwriting`), 1,500 steps of 16 lines, peak LR 1e-4, 72 minutes, selected on the
  handwriting lines' val split (val CER 0.0314); then the average of its start and the fine-tuned weights at
  alpha 0.75 (`scripts/interpolate_encoder.py`), chosen by the mean CER relative to ocr_default's encoder over
  four validation sets (alpha 1.0 / 0.75 / 0.5: 0.775 / 0.747 / 0.87); swapped into ocr_default with
  `scripts/read_at_height.py ... --weights`.
- Greedy CTC on validation sets, 300 lines each (182 EHRI), 48 px encoder -> this one: hand-font val 0.0387 ->
  0.0238, Hooker val 0.3314 -> 0.3004, EHRI val 0.0115 -> 0.0092, print val 0.0093 -> 0.0062.
- Joint decoding on lines none of it trained on, 300 lines each (149 EHRI test), ocr_default -> ocr_fast, one
  run, 2 threads: held-out print fonts 0.0016 -> 0.0014 (18.9 -> 26.6 lines/s), held-out handwriting fonts
  0.1546 -> 0.1639 (15.9 -> 19.2), EHRI test 0.0128 -> 0.0120 (12.0 -> 15.3); Hooker val 0.2807 -> 0.2622
  (21.4 -> 26.9; Hooker's writer is in the training data).
"""),
}

if __name__ == "__main__":
    for name in sys.argv[1:] or PARTS:
        src, title, how = PARTS[name]
        if (src / "model.safetensors").is_file():
            print(export_shipped(src, SHIPPED_DIR / name, title, how))
        else:
            print(f"{name}: {src} has no model yet; skipped")
