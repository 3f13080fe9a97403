"""The measure wing: what a trained fusion model is measured by.

* :mod:`~raybal.measure.metrics`: each task's loss and metric statistics (accuracy, mIoU, mAP / F1);
* :mod:`~raybal.measure.utilization`: permutation MU, Wu et al.'s conditional utilization rate,
  the mean-ablation utilization and the conditional learning speed;
* :mod:`~raybal.measure.robustness`: the corruption sweep over (split, modality, corruption, level).

It reads data sets, models and corruptions and knows nothing of training or of result files.
"""

__all__ = ["metrics", "robustness", "utilization"]
