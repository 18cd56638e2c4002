"""Demonstration datasets: collection, HDF5 import, format, statistics and loaders.

    gauntlet data collect --task T --variant V --episodes N --out DS [--cameras]   (gauntlet.data.collect)
    gauntlet data import-hdf5 FILE --out DS                                        (gauntlet.data.import_hdf5)
    gauntlet data stats DS                                                         (gauntlet.data.stats)

The format (gauntlet.data.dataset_format) is LeRobot-style Parquet readable with pandas alone, plus
simulator states per frame; gauntlet.data.loader turns a dataset into training batches.
"""

from gauntlet.data.dataset_format import (
    Dataset,
    DatasetError,
    DatasetWriter,
    open_dataset,
    validate,
)

__all__ = ["Dataset", "DatasetError", "DatasetWriter", "open_dataset", "validate"]
