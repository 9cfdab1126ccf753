"""Models: line encoder -> connector -> GPT decoder (+ CTC head), greedy / beam decoding."""

from bridgeocr.models.connectors import build_connector, register_connector
from bridgeocr.models.ctc import CTCHead, ctc_greedy_decode
from bridgeocr.models.decoder import GPT, apply_freeze
from bridgeocr.models.decoding import Hypothesis
from bridgeocr.models.encoder import LineEncoder, load_encoder
from bridgeocr.models.ocr import OCRModel, OCROutput

__all__ = ["GPT", "apply_freeze", "LineEncoder", "load_encoder", "CTCHead", "ctc_greedy_decode",
           "build_connector", "register_connector", "OCRModel", "OCROutput", "Hypothesis"]
