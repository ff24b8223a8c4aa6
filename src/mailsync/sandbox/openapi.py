"""Validation of HighLevel requests (and, for tests, responses) against the official OpenAPI files.

The three files in `spec/` are HighLevel's own, copied unchanged. They are OpenAPI 3.0, whose
schemas are *almost* JSON Schema draft 7: the one difference that matters here is `nullable`,
which is rewritten into a `["type", "null"]` union once, at load time. Cross-file references
(`../common/common-schemas.json#/...`) are resolved with a `referencing` registry, so the
package needs nothing outside itself.

Only `jsonschema` is used: it is a runtime dependency, openapi-core is not.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

BASE = "https://sandbox.mailsync.invalid/"
SPEC_FILES = ("apps/contacts.json", "apps/oauth.json", "common/common-schemas.json")


def load_spec(name: str) -> dict[str, Any]:
    """One official spec file, unchanged (e.g. `apps/contacts.json`)."""
    ref = resources.files("mailsync.sandbox").joinpath("spec", *name.split("/"))
    return json.loads(ref.read_text(encoding="utf-8"))


def _nullable_to_union(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 `nullable: true` into a JSON Schema type union, recursively."""
    if isinstance(node, dict):
        out = {k: _nullable_to_union(v) for k, v in node.items()}
        if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_to_union(v) for v in node]
    return node


@cache
def _registry() -> Registry:
    resources_ = [
        (BASE + name, Resource.from_contents(_nullable_to_union(load_spec(name)), DRAFT7))
        for name in SPEC_FILES
    ]
    return Registry().with_resources(resources_)


@cache
def _validator(ref: str) -> Draft7Validator:
    return Draft7Validator({"$ref": ref}, registry=_registry())


def _operation(spec_file: str, method: str, path: str) -> dict[str, Any]:
    doc = _registry().contents(BASE + spec_file)
    try:
        return doc["paths"][path][method.lower()]
    except KeyError:
        raise KeyError(f"{method.upper()} {path} is not in {spec_file}") from None


def _schema_errors(ref: str, instance: Any, where: str) -> list[str]:
    """Messages in the style of HighLevel's 422s: `<field> <problem>`."""
    errors = []
    for err in sorted(_validator(ref).iter_errors(instance), key=lambda e: list(e.path)):
        field = ".".join(str(p) for p in err.path) or where
        errors.append(f"{field} {err.message}")
    return errors


def _body_ref(spec_file: str, op: dict[str, Any], content_type: str) -> str | None:
    content = op.get("requestBody", {}).get("content", {})
    media = content.get(content_type)
    if media is None:
        return None
    ref = media["schema"].get("$ref")
    if ref is None:
        return None
    # An in-file ref; the registry knows each file by its absolute URI.
    return BASE + spec_file + ref if ref.startswith("#") else ref


def body_properties(spec_file: str, method: str, path: str, content_type: str) -> set[str]:
    """The property names the request body schema declares (for the whitelist check)."""
    op = _operation(spec_file, method, path)
    ref = _body_ref(spec_file, op, content_type)
    if ref is None:
        return set()
    resolved = _registry().resolver().lookup(ref).contents
    return set(resolved.get("properties", {}))


def validate_request(
    spec_file: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    query: dict[str, str],
    path_params: dict[str, str],
    body: Any = None,
    has_body: bool = False,
    content_type: str = "application/json",
    whitelist: bool = True,
) -> list[str]:
    """Check one request against its operation; return the violations (empty when valid).

    `whitelist` mirrors HighLevel's NestJS pipes, which answer "property X should not exist"
    for body keys the DTO does not declare; the OpenAPI file alone would allow them.
    """
    op = _operation(spec_file, method, path)
    errors: list[str] = []
    lower_headers = {k.lower(): v for k, v in headers.items()}
    for param in op.get("parameters", []):
        where = param["in"]
        name = param["name"]
        source = {"header": lower_headers, "query": query, "path": path_params}.get(where)
        if source is None:
            continue
        key = name.lower() if where == "header" else name
        if key not in source:
            if param.get("required"):
                errors.append(f"{name} ({where}) is required")
            continue
        value: Any = source[key]
        schema = _nullable_to_union(param.get("schema", {}))
        if schema.get("type") in ("number", "integer"):
            try:
                value = float(value) if schema["type"] == "number" else int(value)
            except ValueError:
                errors.append(f"{name} ({where}) must be a {schema['type']}")
                continue
        for err in Draft7Validator(schema).iter_errors(value):
            errors.append(f"{name} ({where}) {err.message}")
    request_body = op.get("requestBody")
    if request_body is not None:
        ref = _body_ref(spec_file, op, content_type)
        if ref is None:
            errors.append(f"content type must be one of {sorted(request_body['content'])}")
        elif not has_body:
            if request_body.get("required"):
                errors.append("request body is required")
        else:
            errors.extend(_schema_errors(ref, body, "body"))
            if whitelist and isinstance(body, dict):
                allowed = body_properties(spec_file, method, path, content_type)
                errors.extend(
                    f"property {key} should not exist" for key in body if key not in allowed
                )
    return errors


def validate_response(
    spec_file: str, method: str, path: str, status: int, body: Any
) -> list[str]:
    """Check a response body against the schema documented for that status.

    Statuses the operation does not document (403, 404, 429, 5xx) and responses documented
    without a schema return no errors: there is nothing official to check them against.
    """
    op = _operation(spec_file, method, path)
    response = op.get("responses", {}).get(str(status))
    if response is None:
        return []
    media = response.get("content", {}).get("application/json")
    if media is None or "$ref" not in media.get("schema", {}):
        return []
    ref = media["schema"]["$ref"]
    ref = BASE + spec_file + ref if ref.startswith("#") else _absolute(spec_file, ref)
    return _schema_errors(ref, body, "body")


def _absolute(spec_file: str, ref: str) -> str:
    """Resolve a relative cross-file ref (`../common/x.json#/...`) against a spec file."""
    from urllib.parse import urljoin

    return urljoin(BASE + spec_file, ref)


def documented_statuses(spec_file: str, method: str, path: str) -> set[int]:
    """The statuses an operation documents (to tell undocumented answers apart in tests)."""
    return {int(s) for s in _operation(spec_file, method, path).get("responses", {})}


def deep_copy_spec(name: str) -> dict[str, Any]:
    """A private copy of a spec file, for tests that hand it to other validators."""
    return copy.deepcopy(load_spec(name))
