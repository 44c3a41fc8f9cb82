"""Constraint-driven search over compression recipes (Optuna), Pareto front, resume; owns no technique."""

from tfopt.optimize.constraints import Constraints
from tfopt.optimize.result import OptimizeResult
from tfopt.optimize.run import optimize

__all__ = ["Constraints", "OptimizeResult", "optimize"]
