"""whatif-cxr model library: label vocabulary, networks, checkpoints and the inference pipeline.

Importing this package is cheap (no torch): heavy modules are imported where they are used.
The library imports neither `training` nor the service packages (`api`, `worker`).
"""
