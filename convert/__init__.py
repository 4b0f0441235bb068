"""LiteWhisper conversion pipeline: calibrate, decompose, choose ranks, export, evaluate, push."""

__version__ = "0.1.0"
