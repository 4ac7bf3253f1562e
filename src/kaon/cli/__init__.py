"""The `kaon` command line."""

from kaon.cli.app import app, main

__all__ = ["app", "main"]
