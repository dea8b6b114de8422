"""Evaluators: the objects a task hands the runner to score a state on the eval split."""

from dlx.metrics.evaluators import BatchSums, Evaluator, PerExample

__all__ = ["BatchSums", "Evaluator", "PerExample"]
