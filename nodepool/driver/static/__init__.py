"""The static driver: hosts that are always there (upstream's ``static``)."""

from nodepool.driver.registry import Driver
from nodepool.driver.static.config import (StaticProviderConfig, build_provider,
                                           static_provider_schema)

DRIVER = Driver(name="static", schema=static_provider_schema, model=StaticProviderConfig,
                build=build_provider,
                provider_class="nodepool.driver.static.provider:StaticProvider")
