"""The sandbox's machine-readable documents. The OpenAPI schema is generated from the same pydantic models
the client uses, so the published contract cannot drift from the code."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ..gateway import models as m
from . import pricing

PATHS = m.DOCUMENT_PATHS

_NOTE = (
    "This is the apikey-mcp SANDBOX gateway: it follows the API-Key gateway's published contract "
    "(https://api-key.org), but its models, prices and results are made up, nothing is billed, and its "
    "media results are tiny placeholder files."
)

_ENDPOINTS: list[tuple[str, str, type[BaseModel] | None, type[BaseModel] | None, str]] = [
    ("GET", "/v1/models", None, m.ModelList, "List public models, categories and metadata."),
    ("POST", "/v1/credits/estimate", m.EstimateRequest, m.Estimate, "Estimate credits before starting paid tasks."),
    ("POST", "/v1/chat/completions", m.ChatRequest, m.ChatCompletion, "OpenAI-compatible chat completion."),
    ("POST", "/v1/embeddings", m.EmbeddingRequest, m.EmbeddingList, "OpenAI-compatible embeddings."),
    ("POST", "/v1/images/generations", m.ImageRequest, m.Task, "Create an image generation task."),
    ("POST", "/v1/videos", m.VideoRequest, m.Task, "Create a text-, image- or video-to-video task."),
    ("POST", "/v1/music/generations", m.MusicRequest, m.Task, "Create a music generation task."),
    ("GET", "/v1/tasks/{task_id}", None, m.Task, "Poll an image, video or music task's status and output URLs."),
]


def _llms_txt(base_url: str) -> str:
    lines = [
        "# API-Key gateway (sandbox)",
        "",
        f"> {_NOTE}",
        "",
        "One key and one credit wallet for chat, embeddings, image, video and music models. Authenticate with",
        "`Authorization: Bearer KEY` or `x-api-key: KEY`. Estimate credits before paid tasks and send",
        "`max_credits` on every create: the gateway refuses, before any task exists, a job dearer than that.",
        "",
        "## Docs",
        f"- [OpenAPI schema]({base_url}/openapi.json): every endpoint and model",
        f"- [Markdown docs]({base_url}/api-docs/index.md): endpoints, billing, callbacks, errors",
        f"- [Auth]({base_url}/auth.md): how to send the key",
        f"- [API catalog]({base_url}/.well-known/api-catalog): RFC 9727 linkset",
        "",
        "## Endpoints",
        *(f"- {method} {base_url}{path}: {summary}" for method, path, _, _, summary in _ENDPOINTS),
        "",
        "## Models",
        *(f"- {info.id} ({info.modality}): {info.description}" for info in pricing.CATALOGUE.values()),
    ]
    return "\n".join(lines) + "\n"


def _auth_md(base_url: str) -> str:
    return f"""# Authentication (sandbox)

{_NOTE}

Send a consumer API key with every request:

```
Authorization: Bearer YOUR_API_KEY
# or
x-api-key: YOUR_API_KEY
```

`GET /v1/models` and `POST /v1/credits/estimate` answer without a key. A missing or unknown key on any other
endpoint gets `401` with `{{"error": {{"code": "invalid_api_key", ...}}}}`. Sandbox keys are the ones the
sandbox printed when it started (`apikey-mcp sandbox --key KEY` chooses them); each has its own wallet,
shown at `GET {base_url}/sandbox/wallet`.
"""


def _index_md(base_url: str) -> str:
    endpoints = "\n".join(f"| {method} | `{path}` | {summary} |" for method, path, _, _, summary in _ENDPOINTS)
    return f"""# API-Key gateway docs (sandbox)

{_NOTE}

Base URL: `{base_url}`

| Method | Path | What it does |
|---|---|---|
{endpoints}

## Billing
Estimate first (`POST /v1/credits/estimate` is free). Add `max_credits` to task bodies: a job whose estimate
exceeds it is refused with `max_credits_exceeded` before a task is created. Credits are reserved when a task
is created, settled when it succeeds and refunded when it fails. Chat and embeddings are charged per token.

## Tasks
Image, video and music creates return `{{"task_id", "id", "object", "status": "pending"}}`. Poll
`GET /v1/tasks/{{task_id}}`: `pending -> running -> succeeded | failed`. A succeeded task lists `outputs`
(`url`, `mime_type`): durable result links. In the sandbox a prompt containing `[sandbox:fail]` always fails.

## Callbacks
With `callback_url`, terminal events are POSTed with headers `x-api-key-event`
(`gateway.task.completed` or `gateway.task.failed`), `x-api-key-task-id`, `x-api-key-timestamp` (unix
seconds) and `x-api-key-signature`: the lowercase hex HMAC-SHA256 of `timestamp + "." + body` keyed with the
webhook secret. Reject timestamps more than 5 minutes old.

## Errors
`{{"error": {{"message", "type": "gateway_error", "code"}}}}` with codes `invalid_api_key` (401),
`permission_denied` (403), `model_not_found` / `task_not_found` (404), `invalid_request` (400/422, `param` names
the field), `insufficient_credits` and `max_credits_exceeded` (402), `rate_limited` (429 with `Retry-After`),
`server_error` (5xx).
"""


def _api_catalog(base_url: str) -> str:
    linkset = {
        "linkset": [
            {
                "anchor": f"{base_url}/v1",
                "service-desc": [
                    {
                        "href": f"{base_url}/openapi.json",
                        "type": "application/vnd.oai.openapi+json",
                        "title": "API-Key gateway (sandbox) OpenAPI schema",
                    }
                ],
                "service-doc": [{"href": f"{base_url}/api-docs/index.md", "type": "text/markdown"}],
                "describedby": [{"href": f"{base_url}/llms.txt", "type": "text/plain"}],
            }
        ]
    }
    return json.dumps(linkset, indent=2)


@cache
def _schemas() -> tuple[dict[type[BaseModel], dict[str, Any]], dict[str, Any]]:
    models: set[type[BaseModel]] = {m.ErrorEnvelope}
    models |= {model for _, _, body, answer, _ in _ENDPOINTS for model in (body, answer) if model}
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "validation") for model in sorted(models, key=lambda x: x.__name__)
    ]
    refs, definitions = models_json_schema(
        inputs,
        ref_template="#/components/schemas/{model}",
    )
    return {model: refs[(model, "validation")] for model in models}, definitions.get("$defs", {})


def openapi(base_url: str) -> dict[str, Any]:
    refs, schemas = _schemas()
    error = {"content": {"application/json": {"schema": refs[m.ErrorEnvelope]}}, "description": "Error envelope"}
    paths: dict[str, dict[str, Any]] = {}
    for method, path, body, answer, summary in _ENDPOINTS:
        assert answer is not None, f"{path} answers with a model"
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": refs[answer]}}},
                "default": error,
            },
        }
        if body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[body]}}}
        if "{task_id}" in path:
            task_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
            operation["parameters"] = [task_id]
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "API-Key gateway (sandbox)", "version": "1", "description": _NOTE},
        "servers": [{"url": base_url}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


_RENDER = {
    "llms.txt": (_llms_txt, "text/plain; charset=utf-8"),
    "auth.md": (_auth_md, "text/markdown; charset=utf-8"),
    "index.md": (_index_md, "text/markdown; charset=utf-8"),
    "api-catalog": (_api_catalog, "application/linkset+json"),
    "openapi.json": (lambda base_url: json.dumps(openapi(base_url), indent=2), "application/json"),
}


def render(name: str, *, base_url: str) -> tuple[str, str]:
    """A document's text and media type, with links pointing at this sandbox."""
    build, media_type = _RENDER[name]
    return build(base_url), media_type
