"""Serving stage: alexnet-serve runs Triton on the served repository behind an nginx front and keeps both healthy."""
