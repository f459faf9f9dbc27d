"""docs/api.md is the OpenAPI document's, as it is now."""

from __future__ import annotations

from serving import api_docs
from serving.openapi import OPERATIONS, spec


def test_the_api_page_is_written_from_the_current_document() -> None:
    assert api_docs.PAGE.read_text(encoding="utf-8") == api_docs.render(), (
        "docs/api.md is stale: run `python -m serving.api_docs`"
    )


def test_the_page_names_every_operation_parameter_and_schema() -> None:
    page = api_docs.render()
    document = spec()
    for op in OPERATIONS:
        assert f"## `{op.method.upper()} {op.path}`" in page
        assert f"(`{op.operation_id}`)" in page
        for name in [*op.path_params, *op.query.model_fields]:
            assert f"| `{name}` |" in page, (op.path, name)
    for name in document["components"]["schemas"]:
        assert f"### {name}\n" in page
    # a change of the document changes the page: the check above can fail
    document["paths"]["/healthz"]["get"]["summary"] = "something else"
    assert api_docs.render(document) != page
