"""Adapters to the inference server (Triton)."""
