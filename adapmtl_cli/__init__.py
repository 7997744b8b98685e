"""adapmtl: compress multitask dense-prediction networks with AdapMTL."""

__version__ = "0.1.0"
