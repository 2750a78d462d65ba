"""llmrun: run large, repeatable jobs of LLM calls from a shared YAML recipe.

This module is the public API, and all a loader, provider, postprocessor, writer or observer
may import (with ``llmrun.hookspecs``, and ``llmrun.testing`` in its tests); an engine plugin
adds ``llmrun.engine_api``. The built-ins in ``llmrun/builtins/`` import nothing else either
(``lint-imports`` and tests/test_public_api.py hold them to it). docs/plugins.md lists the names.

Names are imported on first use, so ``import llmrun`` (and the CLI's start-up) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .__about__ import __version__
from .hookspecs import PLUGIN_API, hookimpl
from .lazy import lazy_getattr

# Public name -> "module" (the same name there) or "module:name" (a name that says more here
# than in its module, where the context said it).
_WHERE = {
    # Running a recipe from a program.
    "Recipe": "recipe.model",
    "RunSummary": "job.summary",
    "load_recipe": "recipe.load",
    "open_recipe": "api",
    "run_recipe": "api",
    "run_recipe_sync": "api",
    # The errors (one tree).
    "CallError": "errors",
    "InputError": "errors",
    "LlmrunError": "errors",
    "LockedError": "errors",
    "PluginError": "errors",
    "PostprocessError": "errors",
    "Problem": "errors",
    "RecipeError": "errors",
    "RecordError": "errors",
    "RunAborted": "errors",
    "TemplateError": "errors",
    # The values that flow through a run, and what observers receive.
    "ComponentContext": "values",
    "Prompt": "values",
    "Reply": "values",
    "Result": "values",
    "Row": "values",
    "RunEnd": "values",
    "RunStart": "values",
    "SourceRecord": "values",
    "Usage": "values",
    "flatten": "values",
    # The protocols a component implements (hookspecs.py is the other half).
    "GroupingProvider": "components",
    "Loader": "components",
    "Postprocessor": "components",
    "Provider": "components",
    "ReadableWriter": "components",
    "RewritableWriter": "components",
    "RowEdit": "components",
    "RunEngine": "components",
    "Transport": "components",
    "Writer": "components",
    "Register": "hookspecs",
    # A provider's batch API (run.mode: batch).
    "BatchAPI": "batch.contract",
    "BATCH_RESULTS": "batch.contract",
    "BatchInfo": "batch.contract",
    "BatchState": "batch.contract",
    "LineResult": "batch.contract",
    # What a component reads: its options, the files a recipe may name, images.
    "Access": "access",
    "OutsideError": "access",
    "thaw": "recipe.model",
    "Image": "images",
    "ImageError": "images",
    "image_media_type": "images:sniff",
    "load_image": "images",
    # What a provider shares with the built-in ones: requests, answers, failures.
    "Dropper": "wire.requests",
    "KeyedRequests": "wire.requests",
    "content_parts": "wire.requests:parts_of",
    "content_text": "wire.requests:text_of",
    "error_json": "wire.requests",
    "parse_json": "wire.requests",
    "response_json": "wire.requests:decode",
    "bad_body": "wire.retry",
    "classify_http": "wire.retry",
    "FIRST_BYTE": "wire.bounds",
    "IDLE_TIMEOUT": "wire.bounds",
    # A writer's files: a rename made durable, an old output kept under a second name.
    "fsync_dir": "durable",
    "link_or_copy": "durable",
    # JSON as the hot path writes it (a writer's rows, a provider's bodies).
    "json_dumps": "jsonio:dumps",
    "json_loads": "jsonio:loads",
    "row_line": "jsonio",
    # An observer's view of a finished output: the tables of `llmrun report`.
    "report_data": "report.data:gather",
}

# Plain sorted order (tests/test_docs.py), not ruff's constants-first order.
__all__ = [  # noqa: RUF022
    "Access",
    "BATCH_RESULTS",
    "BatchAPI",
    "BatchInfo",
    "BatchState",
    "CallError",
    "ComponentContext",
    "Dropper",
    "FIRST_BYTE",
    "GroupingProvider",
    "IDLE_TIMEOUT",
    "Image",
    "ImageError",
    "InputError",
    "KeyedRequests",
    "LineResult",
    "LlmrunError",
    "Loader",
    "LockedError",
    "OutsideError",
    "PLUGIN_API",
    "PluginError",
    "PostprocessError",
    "Postprocessor",
    "Problem",
    "Prompt",
    "Provider",
    "ReadableWriter",
    "Recipe",
    "RecipeError",
    "RecordError",
    "Register",
    "Reply",
    "Result",
    "RewritableWriter",
    "Row",
    "RowEdit",
    "RunAborted",
    "RunEnd",
    "RunEngine",
    "RunStart",
    "RunSummary",
    "SourceRecord",
    "TemplateError",
    "Transport",
    "Usage",
    "Writer",
    "__version__",
    "bad_body",
    "classify_http",
    "content_parts",
    "content_text",
    "error_json",
    "flatten",
    "fsync_dir",
    "hookimpl",
    "image_media_type",
    "json_dumps",
    "json_loads",
    "link_or_copy",
    "load_image",
    "load_recipe",
    "open_recipe",
    "parse_json",
    "report_data",
    "response_json",
    "row_line",
    "run_recipe",
    "run_recipe_sync",
    "thaw",
]


__getattr__ = lazy_getattr("llmrun", _WHERE, globals())


if TYPE_CHECKING:
    from .access import Access, OutsideError
    from .api import open_recipe, run_recipe, run_recipe_sync
    from .batch.contract import BATCH_RESULTS, BatchAPI, BatchInfo, BatchState, LineResult
    from .components import (
        GroupingProvider,
        Loader,
        Postprocessor,
        Provider,
        ReadableWriter,
        RewritableWriter,
        RowEdit,
        RunEngine,
        Transport,
        Writer,
    )
    from .durable import fsync_dir, link_or_copy
    from .errors import (
        CallError,
        InputError,
        LlmrunError,
        LockedError,
        PluginError,
        PostprocessError,
        Problem,
        RecipeError,
        RecordError,
        RunAborted,
        TemplateError,
    )
    from .hookspecs import Register
    from .images import Image, ImageError, load_image
    from .images import sniff as image_media_type
    from .job.summary import RunSummary
    from .jsonio import dumps as json_dumps
    from .jsonio import loads as json_loads
    from .jsonio import row_line
    from .recipe.load import load_recipe
    from .recipe.model import Recipe, thaw
    from .report.data import gather as report_data
    from .values import (
        ComponentContext,
        Prompt,
        Reply,
        Result,
        Row,
        RunEnd,
        RunStart,
        SourceRecord,
        Usage,
        flatten,
    )
    from .wire.bounds import FIRST_BYTE, IDLE_TIMEOUT
    from .wire.requests import Dropper, KeyedRequests, error_json, parse_json
    from .wire.requests import decode as response_json
    from .wire.requests import parts_of as content_parts
    from .wire.requests import text_of as content_text
    from .wire.retry import bad_body, classify_http
