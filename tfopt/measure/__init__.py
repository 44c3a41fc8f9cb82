"""Runs an artefact on a runtime, always in a child process: evaluate, benchmark, delegation, parity, micro."""
