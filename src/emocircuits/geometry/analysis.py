"""Moved: the table helpers live in :mod:`emocircuits.tables`, the geometry stage in
:mod:`emocircuits.geometry.stage`. This name remains only for modules not yet updated
(import from :mod:`emocircuits.tables`); it is to be deleted once none is left."""

from emocircuits.tables import csv_bytes, read_table, write_tables

__all__ = ["csv_bytes", "read_table", "write_tables"]
