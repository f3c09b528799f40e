"""The subcommands beside serve: cache, token, warm, export and import."""
