"""CLI commands beyond run/validate/plugins/schema, one module each (see cli.COMMAND_MODULES)."""
