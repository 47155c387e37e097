"""Configuration: nodepool.yaml, and the clouds.yaml policy for its providers.

``config.model``, ``config.errors``, ``config.schema`` and
``config.zookeeper`` are plain data and checks; ``config.loader`` reads the
files.  A provider entry's schema and model are its driver's
(``nodepool/driver/<name>/``).  The package imports nothing of the drivers
or of ZooKeeper: whoever loads nodepool.yaml passes the drivers in
(``drivers=`` of ``validate`` and ``load_config``).
"""

from nodepool.config.errors import ConfigError, ConfigProblem
from nodepool.config.loader import DEFAULT_CONFIG, load_config, validate

__all__ = ["ConfigError", "ConfigProblem", "DEFAULT_CONFIG", "load_config", "validate"]
