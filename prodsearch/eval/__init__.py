"""Accuracy of customer photos against an index."""

from prodsearch.eval.evaluate import EvalReport, evaluate
from prodsearch.eval.metrics import hits_at_k, top_k_accuracy

__all__ = ["EvalReport", "evaluate", "hits_at_k", "top_k_accuracy"]
