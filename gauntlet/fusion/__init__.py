"""Spatial-omics fusion methods, their data and metrics (stands alone: imports nothing else here)."""
