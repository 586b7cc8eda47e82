"""kohya-1to2: the 1to2 two-stage multi-character LoHa method on top of kohya-ss sd-scripts."""

__version__ = "0.1.0"
