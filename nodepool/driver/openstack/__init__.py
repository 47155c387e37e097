"""The OpenStack driver: REST adapter, shared server list, state machines."""

from nodepool.driver.openstack.config import build_provider, warn_off_values
from nodepool.driver.openstack.model import Provider
from nodepool.driver.openstack.schema import openstack_provider_schema
from nodepool.driver.registry import Driver

DRIVER = Driver(name="openstack", schema=openstack_provider_schema, model=Provider,
                build=build_provider, warn=warn_off_values,
                provider_class="nodepool.driver.openstack.provider:OpenStackProvider",
                uses_clouds_yaml=True, uses_diskimages=True)
