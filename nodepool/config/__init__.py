"""Configuration: nodepool.yaml, and the clouds.yaml policy for its providers."""

from nodepool.config.errors import ConfigError, ConfigProblem
from nodepool.config.loader import DEFAULT_CONFIG, load_config, validate

__all__ = ["ConfigError", "ConfigProblem", "DEFAULT_CONFIG", "load_config", "validate"]
