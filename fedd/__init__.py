"""fedd: a storage federation daemon for scientific data grids."""

__version__ = "0.1.0"
