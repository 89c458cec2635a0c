"""Thin CLI subcommands that talk to the controller API."""
