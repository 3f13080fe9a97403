"""The study wing: searches over run configurations with Ray Tune and Optuna.

* :mod:`~raybal.study.space`: a study file and its search space;
* :mod:`~raybal.study.distributions`: the search distributions (uniform, loguniform, int, choice, simplex);
* :mod:`~raybal.study.objectives`: which result columns a study may optimise;
* :mod:`~raybal.study.searcher`: the Optuna searcher behind Ray Tune;
* :mod:`~raybal.study.recorder`: the Tune callback that records every finished trial;
* :mod:`~raybal.study.driver`: :func:`~raybal.study.driver.run_study` and
  :func:`~raybal.study.driver.resume_study`.
"""

__all__ = ["distributions", "driver", "objectives", "recorder", "searcher", "space"]
