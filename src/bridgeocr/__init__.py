"""bridgeocr: read text-line images with a language model.

line image -> vision encoder -> connector -> GPT decoder -> text
"""

__version__ = "0.1.0"

__all__ = ["BridgeOCR", "__version__"]


def __getattr__(name):  # lazy: `import bridgeocr` stays cheap for the CLI
    if name == "BridgeOCR":
        from bridgeocr.api import BridgeOCR

        return BridgeOCR
    raise AttributeError(name)
