"""Subcommands of the `tfopt` CLI: one module a command (NAME, HELP, define_flags(fv), main(args, fv)); see common.py."""
