"""The analysis wing: reads only the Parquet tables and ``study.json`` / ``run.json``.

* :mod:`~raybal.analysis.intervals`: the statistics (intervals, paired differences) shared below;
* :mod:`~raybal.analysis.runs`: one row per (configuration, seed), and a label per trial;
* :mod:`~raybal.analysis.effect`: does utilization predict the objective (slope, variance shares)?
* :mod:`~raybal.analysis.best`: ``raybal best``: the best configuration and its runner-ups;
* :mod:`~raybal.analysis.plots`: the standard figures;
* :mod:`~raybal.analysis.report`: ``raybal report``: every figure of a results directory.
"""

__all__ = ["best", "effect", "intervals", "plots", "report", "runs"]
