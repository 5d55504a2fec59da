"""Generative quality: reconstruction, -ELBO and IWAE NLL, feature-FID, precision/recall, class coverage.

>>> from bigmodel.eval import EvalOptions, evaluate
>>> report = evaluate("runs/vae/bundle", EvalOptions(k=500))
>>> report["nll"]["iwae"], report["fid"]
"""

from bigmodel.eval.run import EvalOptions, compare, evaluate, evaluate_model, load_eval_data, same_data

__all__ = ["EvalOptions", "compare", "evaluate", "evaluate_model", "load_eval_data", "same_data"]
