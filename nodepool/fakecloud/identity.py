"""Keystone v3: version documents and password tokens with a service catalog."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from nodepool.fakecloud.errors import api_error, unauthorized
from nodepool.fakecloud.model import ProjectState, utcnow
from nodepool.fakecloud.web import ApiError, Request, Response, Router

if TYPE_CHECKING:
    from nodepool.fakecloud.cloud import FakeCloud

DOMAIN = {"id": "default", "name": "Default"}


@dataclass
class Token:
    id: str
    project_id: str
    user_id: str
    user_name: str
    expires_mono: float
    body: dict


class TokenStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}

    def add(self, token: Token) -> None:
        with self._lock:
            self._tokens[token.id] = token

    def get(self, token_id: str | None, now: float) -> Token | None:
        if not token_id:
            return None
        with self._lock:
            token = self._tokens.get(token_id)
            if token is not None and token.expires_mono <= now:
                del self._tokens[token_id]
                return None
            return token

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            return self._tokens.pop(token_id, None) is not None


def catalog(base: str, region: str, project_id: str) -> list[dict]:
    """compute, image, network, volumev3 (and its block-storage alias), identity."""
    services = [("identity", "keystone", f"{base}/identity"),
                ("compute", "nova", f"{base}/compute/v2.1"),
                ("image", "glance", f"{base}/image"),
                ("network", "neutron", f"{base}/network"),
                ("volumev3", "cinderv3", f"{base}/volume/v3/{project_id}"),
                ("block-storage", "cinder", f"{base}/volume/v3/{project_id}")]
    out = []
    for stype, name, url in services:
        sid = uuid.uuid5(uuid.NAMESPACE_URL, f"{stype}").hex
        endpoints = [{"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{stype}/{iface}").hex,
                      "interface": iface, "region": region, "region_id": region, "url": url}
                     for iface in ("public", "internal")]
        out.append({"type": stype, "name": name, "id": sid, "endpoints": endpoints})
    return out


def version_v3(base: str) -> dict:
    return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}


def register(router: Router, cloud: "FakeCloud") -> None:
    def bad(message: str) -> ApiError:
        return api_error("identity", 400, message)

    def versions(req: Request) -> Response:
        return Response(300, {"versions": {"values": [version_v3(req.base_url)]}})

    def version(req: Request) -> Response:
        return Response(200, {"version": version_v3(req.base_url)})

    def issue(req: Request) -> Response:
        data = req.json(bad)
        auth = data.get("auth") if isinstance(data, dict) else None
        if not isinstance(auth, dict) or not isinstance(auth.get("identity"), dict):
            raise bad("Expecting to find auth.identity in request body.")
        identity = auth["identity"]
        methods = identity.get("methods") or []
        scope = auth.get("scope")
        project_ref = _project_ref(scope)
        state = cloud.state
        if "password" in methods:
            user = (identity.get("password") or {}).get("user") or {}
            if not _default_domain(user.get("domain")):
                return unauthorized(req.base_url)
            if project_ref is not None and not _default_domain(project_ref.get("domain")):
                return unauthorized(req.base_url)
            with state.lock:
                found = state.authenticate(user.get("name"), user.get("id"),
                                           user.get("password"),
                                           project_ref.get("name") if project_ref else None,
                                           project_ref.get("id") if project_ref else None)
            if found is None:
                return unauthorized(req.base_url)
            project, user_cfg = found
            user_id, user_name = user_cfg.id, user_cfg.name
        elif "token" in methods:
            old = cloud.tokens.get((identity.get("token") or {}).get("id"), cloud.clock())
            if old is None:
                return unauthorized(req.base_url)
            project = state.projects[old.project_id]
            if project_ref is not None and project_ref.get("name", project.name) != project.name:
                return unauthorized(req.base_url)
            user_id, user_name = old.user_id, old.user_name
        else:
            raise bad("fakecloud supports the password and token auth methods.")
        token = _make_token(cloud, req.base_url, project, user_id, user_name, methods)
        cloud.tokens.add(token)
        return Response(201, token.body, {"X-Subject-Token": token.id})

    def validate(req: Request) -> Response:
        token = cloud.tokens.get(req.headers.get("X-Subject-Token"), cloud.clock())
        if token is None:
            raise api_error("identity", 404, "Could not find token.")
        return Response(200, token.body, {"X-Subject-Token": token.id})

    def revoke(req: Request) -> Response:
        if not cloud.tokens.revoke(req.headers.get("X-Subject-Token") or ""):
            raise api_error("identity", 404, "Could not find token.")
        return Response(204)

    router.add("GET", "/identity", versions, "identity", auth=False)
    router.add("GET", "/identity/v3", version, "identity", auth=False)
    router.add("POST", "/identity/v3/auth/tokens", issue, "identity", auth=False)
    router.add("GET", "/identity/v3/auth/tokens", validate, "identity")
    router.add("DELETE", "/identity/v3/auth/tokens", revoke, "identity")


def _project_ref(scope: Any) -> dict | None:
    if not isinstance(scope, dict):
        return None
    project = scope.get("project")
    return project if isinstance(project, dict) else None


def _default_domain(domain: Any) -> bool:
    """Every user and project lives in the Default domain."""
    if domain is None:
        return True
    if not isinstance(domain, dict):
        return False
    return domain.get("id", "default") == "default" and \
        domain.get("name", "Default") == "Default"


def _make_token(cloud: "FakeCloud", base: str, project: ProjectState, user_id: str,
                user_name: str, methods: list[str]) -> Token:
    now = utcnow()
    ttl = cloud.config.token_ttl_seconds
    expires = now + timedelta(seconds=ttl)
    token_id = "gAAAAAfc" + uuid.uuid4().hex + uuid.uuid4().hex
    body = {"token": {
        "methods": list(methods),
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "audit_ids": [uuid.uuid4().hex[:22]],
        "user": {"id": user_id, "name": user_name, "domain": DOMAIN,
                 "password_expires_at": None},
        "project": {"id": project.id, "name": project.name, "domain": DOMAIN},
        "is_domain": False,
        "roles": [{"id": "fc0000000000000000000000000member", "name": "member"},
                  {"id": "fc00000000000000000000000000reader", "name": "reader"}],
        "catalog": catalog(base, cloud.config.region, project.id),
    }}
    return Token(token_id, project.id, user_id, user_name, cloud.clock() + ttl, body)
