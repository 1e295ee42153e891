from .trm import TRM, Trace, count_params

__all__ = ["TRM", "Trace", "count_params"]
