"""Every driver this launcher serves, keyed by a provider's ``driver:`` value.

The launcher, stats and the status API know drivers only through this table;
whoever loads nodepool.yaml passes ``drivers()`` to the config loader (the
configuration sits below the drivers and does not import them).  A driver
is a package under ``nodepool/driver/`` with a ``DRIVER = Driver(...)`` in
its ``__init__``; adding one is that package and one line in
``DRIVER_PACKAGES`` below (see doc/writing-a-driver.rst).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from nodepool.config.errors import Problems


@dataclass(frozen=True)
class Driver:
    """One driver: how its provider entries are checked and built (the
    ``nodepool.config.loader.ProviderParser`` part), and which class serves
    them.

    * ``schema``: checks one entry of ``providers:`` (a voluptuous schema;
      the loader reports its errors with the entry's path).
    * ``model``: the config model class ``build`` returns; it is a
      ``nodepool.config.model.ProviderConfig`` (its pools ``PoolConfig``s).
    * ``build(index, entry, labels, problems, cloud_settings)``: the model
      for an entry that passed ``schema``; reports what the schema cannot
      see (unknown labels, duplicates) to ``problems``.
    * ``warn(index, entry, problems)``: warnings about values that load but
      may surprise (optional).
    * ``provider_class``: ``"module:Class"`` implementing
      ``nodepool.driver.base.LaunchProvider``; imported only when a launcher
      starts a provider, so config-validate does not load cloud libraries.
    * ``uses_clouds_yaml``: the entries name a ``cloud`` of clouds.yaml,
      which the loader checks against its policy and passes to ``build``.
    * ``uses_diskimages``: ``build`` also takes ``diskimages=`` (name ->
      ``config.model.DiskImage``, the top-level list), for labels that boot
      images built by upstream's nodepool-builder.
    """

    name: str
    schema: Callable[[Any], Any]
    model: type
    build: Callable[..., Any]
    provider_class: str
    warn: Callable[[int, dict, Problems], None] | None = None
    uses_clouds_yaml: bool = False
    uses_diskimages: bool = False

    def load_provider_class(self) -> type:
        module, _, name = self.provider_class.partition(":")
        return getattr(importlib.import_module(module), name)


# One line per driver: the package whose ``DRIVER`` describes it.
DRIVER_PACKAGES = (
    "nodepool.driver.openstack",
    "nodepool.driver.static",
)


def _drivers() -> dict[str, Driver]:
    found = [importlib.import_module(p).DRIVER for p in DRIVER_PACKAGES]
    return {d.name: d for d in found}


_cache: dict[str, Driver] = {}


def drivers() -> dict[str, Driver]:
    """name -> Driver, for every driver served."""
    if not _cache:
        _cache.update(_drivers())
    return dict(_cache)


def get(name: str) -> Driver | None:
    return drivers().get(name)


def provider_class(config: Any) -> type:
    """The class serving a built provider config (by its ``driver``)."""
    driver = get(config.driver)
    if driver is None:
        raise LookupError(f"no driver {config.driver!r} (served: {', '.join(drivers())})")
    return driver.load_provider_class()
