"""Tests never reach W&B: offline mode, a private folder, no key; only this plugin loads."""

from __future__ import annotations

import os

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("LLMRUN_WANDB", None)
os.environ["LLMRUN_PLUGINS"] = "wandb"
