"""whatif-cxr worker: the Celery app, the counterfactual task, and the blob store shared with the API.

Importing this package does not import torch: the model is loaded inside the worker process,
once, on its first job (after any fork, so CUDA is never initialised before one).
"""
