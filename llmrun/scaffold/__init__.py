"""Templates ``llmrun plugin new`` fills in (``string.Template``: ``${name}`` placeholders)."""
