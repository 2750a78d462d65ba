"""Test helpers for llmrun and its plugins."""
