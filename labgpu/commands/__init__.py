"""Subcommands of `labgpu`, one module per concern (see labgpu/cli.py)."""
