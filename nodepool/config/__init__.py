"""Configuration: nodepool.yaml, and the clouds.yaml policy for its providers.

``config.model``, ``config.errors``, ``config.schema`` and
``config.zookeeper`` are plain data and checks; the loader also asks the
driver registry for each provider's part, so it is imported on first use
(importing ``nodepool.config.model`` must not pull in the drivers).
"""

from typing import Any

__all__ = ["ConfigError", "ConfigProblem", "DEFAULT_CONFIG", "load_config", "validate"]


def __getattr__(name: str) -> Any:
    if name in ("ConfigError", "ConfigProblem"):
        from nodepool.config import errors
        return getattr(errors, name)
    if name in ("DEFAULT_CONFIG", "load_config", "validate"):
        from nodepool.config import loader
        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
