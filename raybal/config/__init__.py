"""The config wing: the bottom of the package, importing nothing else of raybal.

* :mod:`~raybal.config.tree`: the typed, validated, immutable run configuration (re-exported here);
* :mod:`~raybal.config.registry`: the name-keyed :class:`~raybal.config.registry.Registry` class
  that the data sets, models, corruptions and balancing methods fill;
* :mod:`~raybal.config.tasks`: the task kinds (classification, multi-label, segmentation) and
  their metric names;
* :mod:`~raybal.config.constraint`: ``<column> <op> <number>`` expressions.

It knows no registry entry: resolving a run file against the registries is :mod:`raybal.resolve`.
"""

from raybal.config.tree import (
    RESOURCE_KEYS,
    RUN_SECTIONS,
    BalanceConfig,
    ConfigError,
    DataConfig,
    FrozenMap,
    ModelConfig,
    RobustnessConfig,
    RunConfig,
    TrainConfig,
    build,
    flatten_dict,
    fraction_fields,
    knob,
    load_toml,
    parse_override,
    set_dotted,
    thaw,
)

__all__ = [
    "RESOURCE_KEYS", "RUN_SECTIONS", "BalanceConfig", "ConfigError", "DataConfig", "FrozenMap", "ModelConfig",
    "RobustnessConfig", "RunConfig", "TrainConfig", "build", "flatten_dict", "fraction_fields", "knob",
    "load_toml", "parse_override", "set_dotted", "thaw",
]
