"""Scaling laws: sweeps over model size and tokens (``sweep``), power-law fits and the
compute-optimal allocation (``fit``), and the plots (``plots``)."""
