"""Target discovery: the targets a caller may write, with their schema, key, the body
formats the ingress reads and the operations the access policy grants this caller; and each
target's records as a Protobuf message (``.proto``), for clients sending Protobuf bodies.

A target the caller may not use is answered as one that does not exist (404), as jobs of
another tenant are: the list of a deployment's tables is not everyone's to read.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from schemas.protobuf import proto_text
from schemas.targets import Target
from schemas.vocabulary import Operation
from web.access import AccessPolicy, is_allowed
from web.auth import SCOPE_READ, SCOPE_WRITE, Principal
from web.payloads.media import MediaType
from web.problems import Problem, ProblemType
from web.security import forbidden, guard_key, principal_of
from web.typedefs import targets_key


def allowed_operations(policy: AccessPolicy, principal: Principal, target: str) -> list[str]:
    """The operations on ``target`` the policy grants ``principal``, in a fixed order."""
    return [op.value for op in Operation if is_allowed(policy, principal, target, op.value)]


def target_document(target: Target, operations: list[str]) -> dict[str, Any]:
    """What a client needs to write to ``target``: columns, key, schema, formats, grants."""
    return {
        "name": target.name,
        "doc": target.document.get("doc"),
        "key": list(target.key),
        "columns": [{"name": c.name, "type": c.type.value, "nullable": c.nullable}
                    for c in target.columns],
        "formats": [media.value for media in MediaType],
        "operations": operations,
        "schema": target.document,
        "links": {"self": f"/v1/targets/{target.name}",
                  "proto": f"/v1/targets/{target.name}.proto"},
    }


def _reader(request: web.Request) -> Principal:
    """The principal, if its token carries bulk:read or bulk:write; 403 otherwise."""
    principal = principal_of(request)
    if not principal.scopes & {SCOPE_READ, SCOPE_WRITE}:
        raise forbidden(f"this requires the {SCOPE_READ} or {SCOPE_WRITE} scope",
                        slug=ProblemType.INSUFFICIENT_SCOPE, scope=SCOPE_READ)
    return principal


async def list_targets(request: web.Request) -> web.Response:
    """GET /v1/targets: every target the caller may use, by name."""
    principal = _reader(request)
    policy = request.app[guard_key].access
    documents = []
    for name, target in sorted(request.app[targets_key].items()):
        if operations := allowed_operations(policy, principal, name):
            documents.append(target_document(target, operations))
    return web.json_response({"targets": documents})


def _open_target(request: web.Request) -> tuple[Target, list[str]]:
    """The target the path names and the caller's operations on it; 404 if it does not exist
    for this caller."""
    principal = _reader(request)
    name = request.match_info["name"]
    target = request.app[targets_key].get(name)
    operations = allowed_operations(request.app[guard_key].access, principal, name) if target else []
    if target is None or not operations:
        raise Problem(404, "Target not found", "no target of that name is open to this caller",
                      slug=ProblemType.TARGET_NOT_FOUND)
    return target, operations


async def get_target(request: web.Request) -> web.Response:
    """GET /v1/targets/{name}: one target, or 404 if it does not exist for this caller."""
    return web.json_response(target_document(*_open_target(request)))


async def get_target_proto(request: web.Request) -> web.Response:
    """GET /v1/targets/{name}.proto: the target's record as a proto3 message, for protoc;
    404 as for the target itself."""
    target, _ = _open_target(request)
    return web.Response(text=proto_text(target), content_type="text/plain", charset="utf-8")
