"""Constraint-driven search over configs; composes the other steps and owns no technique."""
