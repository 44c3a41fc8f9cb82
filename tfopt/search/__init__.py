"""Constraint-driven search over compression recipes (Optuna), Pareto front, resume; owns no technique."""

from tfopt.search.constraints import Constraints
from tfopt.search.result import OptimizeResult
from tfopt.search.run import optimize

__all__ = ["Constraints", "OptimizeResult", "optimize"]
