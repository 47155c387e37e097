"""nodepool-fakecloud: a simulated OpenStack cloud with nova's quota rules.

The real openstacksdk talks to it over HTTP: keystone v3, nova v2.1 (up to
microversion 2.96), glance v2, neutron v2.0 and cinder v3, as far as the
launcher uses them.  Servers count against quota from the accepted create
until their delete completes; boots take time and may fail; the API itself can
be slow, failing or hung on demand.  See doc/fakecloud.rst.
"""

from nodepool.fakecloud.cloud import FakeCloud
from nodepool.fakecloud.config import (FakeCloudConfig, FakeCloudConfigError, config_from_dict,
                                       load_config)

__all__ = ["FakeCloud", "FakeCloudConfig", "FakeCloudConfigError", "config_from_dict",
           "load_config"]
