"""Which cloud project a provider works in, for the shared quota book.

Launchers share one book per cloud project, whatever they call the
provider or the cloud: the project is its identity service's URL, the
project (id, or name and domain) and the region, read from the provider's
clouds.yaml entry.
"""

from __future__ import annotations

from typing import Any

from nodepool.config.clouds import load_clouds_file
from nodepool.quota.shared import project_key


def project_of(provider_cfg: Any) -> tuple[str, dict] | None:
    """(project key, description) of an OpenStack-like provider; None for a
    provider without a cloud (static hosts) or a clouds.yaml entry that
    names no project."""
    settings = getattr(provider_cfg, "cloud_settings", None)
    if settings is None or not getattr(settings, "clouds_file", None):
        return None
    entry = load_clouds_file(settings.clouds_file).clouds.get(provider_cfg.cloud)
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth") if isinstance(entry.get("auth"), dict) else {}
    project_id = auth.get("project_id") or auth.get("tenant_id")
    project_name = auth.get("project_name") or auth.get("tenant_name")
    if not project_id and not project_name:
        return None
    domain = (auth.get("project_domain_id") or auth.get("project_domain_name")
              or auth.get("domain_id") or auth.get("domain_name")
              or auth.get("user_domain_id") or auth.get("user_domain_name"))
    region = getattr(provider_cfg, "region_name", None) or settings.region_name \
        or entry.get("region_name")
    auth_url = auth.get("auth_url") or entry.get("profile")
    description = {"auth_url": auth_url, "project_id": project_id,
                   "project_name": None if project_id else project_name,
                   "project_domain": None if project_id else domain, "region": region}
    return project_key(auth_url, project_id, project_name, domain, region), description
