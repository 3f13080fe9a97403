"""The results wing: results as data (DESIGN.md §4).

* :mod:`~raybal.results.schema`: the one record schema: :class:`~raybal.results.schema.RunResult`
  and the rows of the four Parquet tables, with their required columns;
* :mod:`~raybal.results.tables`: the tables on disk: atomic write, merge, read;
* :mod:`~raybal.results.tracking`: the optional MLflow view of the same records.
"""

__all__ = ["schema", "tables", "tracking"]
