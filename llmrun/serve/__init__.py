"""``llmrun serve``: one recipe behind an HTTP API (records, jobs, an OpenAI-compatible gateway,
chat sessions), every client sharing the recipe's keys, limits and budget. Needs the ``serve``
extra (Starlette, uvicorn); see docs/serve.md."""
