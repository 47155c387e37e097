"""Error bodies in each service's own shape, as clients parse them."""

from __future__ import annotations

from nodepool.fakecloud.web import ApiError, Response, reason

_NOVA_KEYS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
              405: "badMethod", 406: "notAcceptable", 409: "conflictingRequest",
              413: "overLimit", 429: "overLimit", 500: "computeFault", 503: "serviceUnavailable"}
_NEUTRON_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden",
                  404: "HTTPNotFound", 405: "HTTPMethodNotAllowed", 409: "HTTPConflict",
                  429: "HTTPTooManyRequests",
                  500: "HTTPInternalServerError", 503: "HTTPServiceUnavailable"}


def error_response(service: str, status: int, message: str, kind: str | None = None,
                   quota: tuple[str, ...] = ()) -> Response:
    if service == "network":
        body: object = {"NeutronError": {"type": kind or _NEUTRON_TYPES.get(status, "HTTPError"),
                                         "message": message, "detail": ""}}
    elif service == "image":
        body = f"{status} {reason(status)}\n\n{message}\n\n   "
    elif service in ("identity", "admin"):
        body = {"error": {"code": status, "title": reason(status), "message": message}}
    else:  # compute, volume
        body = {_NOVA_KEYS.get(status, "computeFault"): {"code": status, "message": message}}
    return Response(status, body, quota=quota)


def api_error(service: str, status: int, message: str, kind: str | None = None,
              quota: tuple[str, ...] = ()) -> ApiError:
    return ApiError(error_response(service, status, message, kind, quota))


def unauthorized(base_url: str) -> Response:
    r = error_response("identity", 401, "The request you have made requires authentication.")
    r.headers["WWW-Authenticate"] = f'Keystone uri="{base_url}/identity"'
    return r
