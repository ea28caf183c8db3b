"""Subcommands that live in their own modules; cli.py wires them into the parser."""
