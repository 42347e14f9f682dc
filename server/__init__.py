"""Serving stage: alexnet-serve (Triton launcher) and the python-backend models it needs."""
