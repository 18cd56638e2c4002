"""Demonstration datasets: collection, HDF5 import, format, statistics and loaders."""
