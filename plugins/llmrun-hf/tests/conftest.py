"""Tests never reach the Hugging Face Hub: offline mode and a private cache, set before
``datasets`` (which reads them at import) is first imported."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="llmrun-hf-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
# Only the plugin under test is loaded, whatever else the environment has installed.
os.environ["LLMRUN_PLUGINS"] = ""
