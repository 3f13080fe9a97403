"""The training wing: one run, from a config to a :class:`~raybal.results.schema.RunResult`.

* :mod:`~raybal.training.loop`: :func:`~raybal.training.loop.fit`, the one training loop
  (pure PyTorch, no Ray), in phases;
* :mod:`~raybal.training.steps`: one training step and an epoch of steps;
* :mod:`~raybal.training.selection`: which epoch becomes the model (``train.select``);
* :mod:`~raybal.training.checkpoint`: ``last.pt`` (resume) and ``model.pt`` (the selected model);
* :mod:`~raybal.training.faults`: injected faults for the reliability tests;
* :mod:`~raybal.training.progress`: the progress printer a caller hands down;
* :mod:`~raybal.training.distributed`: the same ``fit`` on N Ray Train workers;
* :mod:`~raybal.training.runner`: a run into a results directory (``raybal train``, ``raybal robustness``).

Ray is imported lazily and only in ``distributed``.
"""

__all__ = ["checkpoint", "distributed", "faults", "loop", "progress", "runner", "selection", "steps"]
