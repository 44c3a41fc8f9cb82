"""Subcommands of the `tfopt` CLI: one module a command, each with NAME, HELP and main(args)."""
