"""docs/api.md, written from the OpenAPI document (``python -m serving.api_docs``).

The page lists every operation of ``/openapi.json`` with its parameters, body and
answers, then every schema; it says nothing the document does not, so
tests/unit/test_api_docs.py can check that the committed page is current.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from serving.openapi import spec

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
_HEADER = """\
# The HTTP API of `drex serve`

Written from the server's OpenAPI 3.1 document (`GET /openapi.json`) by
`python -m serving.api_docs`: do not edit by hand. The document itself is generated from
the models the server validates and answers with (serving/schemas.py, serving/openapi.py).
[serving.md](serving.md) explains the server: how it follows the learner, how it ranks
and explains, its settings, the API key and its metrics.

Errors are JSON, `{"error": {"code": "...", "message": "..."}}`. With `DREX_API_KEY` set,
every operation but the probes and this document also answers 401 `unauthorized`
without the key (`Authorization: Bearer <key>` or `X-API-Key: <key>`). A method a path
does not take gets 405 `method_not_allowed` with an `Allow` header.
"""


def _type(schema: dict[str, Any]) -> str:
    """A short, readable type of a JSON schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "const" in schema:
        return f"`{schema['const']!r}`".replace("'", '"')
    if "enum" in schema:
        return " or ".join(f'`"{v}"`' for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "properties" not in schema:
        return "object"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    words = {
        "minimum": ">= {}",
        "maximum": "<= {}",
        "minLength": "at least {} character(s)",
        "maxLength": "at most {} characters",
        "maxItems": "at most {} values",
    }
    parts = [text.format(schema[key]) for key, text in words.items() if key in schema]
    items = schema.get("items", {})
    if "maxLength" in items:
        parts.append(f"each at most {items['maxLength']} characters")
    if "default" in schema and schema["default"] != []:
        parts.append(
            f"default `{schema['default']}`".replace("True", "true").replace("False", "false")
        )
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    lines = [f"## `{method.upper()} {path}`", "", f"{op['summary']} (`{op['operationId']}`)."]
    if op.get("description"):
        lines += ["", op["description"]]
    if op.get("parameters"):
        lines += ["", "| parameter | in | type | limits | meaning |", "|---|---|---|---|---|"]
        for p in op["parameters"]:
            cells = [f"`{p['name']}`", p["in"], _type(p["schema"]), _limits(p["schema"])]
            lines.append(
                "| " + " | ".join(_cell(c) for c in [*cells, p.get("description", "")]) + " |"
            )
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        lines += ["", f"Body (JSON): {_type(schema)}."]
    lines += ["", "| status | body | meaning |", "|---|---|---|"]
    for status, answer in op["responses"].items():
        content = answer.get("content", {})
        if "application/json" in content:
            body = _type(content["application/json"]["schema"])
        else:
            body = ", ".join(f"`{c}`" for c in content) or "none"
        lines.append(f"| {status} | {body} | {_cell(answer['description'])} |")
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    lines += ["| field | type | meaning |", "|---|---|---|"]
    required = set(schema.get("required", []))
    for field, sub in schema.get("properties", {}).items():
        kind = _type(sub) + ("" if field in required else " (optional)")
        meaning = " ".join(x for x in (sub.get("description", ""), _limits(sub)) if x)
        lines.append(f"| `{field}` | {_cell(kind)} | {_cell(meaning)} |")
    return lines


def render(document: dict[str, Any] | None = None) -> str:
    """The page for ``document`` (default: the server's, without an API key)."""
    document = document if document is not None else spec()
    lines = [_HEADER]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            lines += [*_operation(method, path, op), ""]
    lines += ["## Schemas", ""]
    for name, schema in sorted(document["components"]["schemas"].items()):
        lines += [*_schema(name, schema), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
