"""A clouds.yaml for the simulated cloud that meets the launcher's policy.

The policy (``nodepool.config.clouds``): a positive ``api_timeout`` per cloud
and a top-level ``cache`` with the memory backend and dotted openstacksdk 4.x
expiration keys.  The written file also uses ``auth_type: v3password`` (one
request fewer per connection) and the catalog's region.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import yaml

from nodepool.config.clouds import RECOMMENDED_EXPIRATION


def clouds_yaml_data(auth_url: str, region: str, cloud_name: str, username: str,
                     password: str, project_name: str, api_timeout: float,
                     extra: dict | None = None,
                     cache_expiration: dict[str, int] | None = None) -> dict[str, Any]:
    if isinstance(api_timeout, bool) or not isinstance(api_timeout, (int, float)) \
            or api_timeout <= 0:
        raise ValueError(f"api_timeout must be a positive number of seconds, got {api_timeout!r}")
    cloud: dict[str, Any] = {
        "auth_type": "v3password",
        "auth": {"auth_url": auth_url, "username": username, "password": password,
                 "project_name": project_name, "user_domain_name": "Default",
                 "project_domain_name": "Default"},
        "region_name": region,
        "identity_api_version": 3,
        "interface": "public",
        "api_timeout": api_timeout,
    }
    for key, value in (extra or {}).items():
        if key == "auth" and isinstance(value, dict):
            cloud["auth"].update(value)
        else:
            cloud[key] = copy.deepcopy(value)
    expiration = dict(RECOMMENDED_EXPIRATION if cache_expiration is None else cache_expiration)
    return {"clouds": {cloud_name: cloud},
            "cache": {"class": "dogpile.cache.memory", "expiration": expiration}}


def dump_clouds_yaml(data: dict, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    # Credentials inside: readable by the owner only, like a real clouds.yaml should be.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Written by nodepool-fakecloud for its simulated cloud.\n")
        yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)
    return path
