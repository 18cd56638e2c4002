"""Demonstration datasets: collection, HDF5 import, format, statistics and loaders.

    gauntlet data collect --task T --variant V --episodes N --out DS [--cameras]   (gauntlet.data.collect)
    gauntlet data collect --from-scenes DB --out DS [--error-types ...]            (gauntlet.data.recovery_demos)
    gauntlet data merge DS_A DS_B --out DS                                         (gauntlet.data.merge)
    gauntlet data import-hdf5 FILE --out DS                                        (gauntlet.data.import_hdf5)
    gauntlet data stats DS                                                         (gauntlet.data.stats)

The format (gauntlet.data.dataset_format: its layout and import surface; dataset_schema, dataset_writer,
dataset_reader, dataset_validation, images) is LeRobot-style Parquet readable with pandas alone, plus
simulator states per frame; gauntlet.data.loader turns a dataset into training batches.
"""

from typing import Any

__all__ = ["Dataset", "DatasetError", "DatasetWriter", "open_dataset", "validate"]


def __getattr__(name: str) -> Any:
    # Lazy: the policies import gauntlet.data.normalization, and should not pay for pyarrow/pandas.
    if name in __all__:
        from gauntlet.data import dataset_format

        return getattr(dataset_format, name)
    raise AttributeError(f"module 'gauntlet.data' has no attribute {name!r}")
