"""Long-tail augmentation for classifier builders (`whatif augment`): counterfactuals of a dataset's
images with rare findings added, written as a dataset the project's readers read, on one machine or
across the worker fleet; and the downstream comparison that measures whether they help.

- `sources`: the dataset's images (phantom specs and directories, the real layouts).
- `plan`: which counterfactuals to make, each with its own seed.
- `output`: the output directory: its run header, its manifest, resuming.
- `local`, `broker`: making them here (`--workers N`) or on the Celery workers (`--broker`).
- `downstream`: a classifier trained without and with them (`whatif eval --downstream`).
"""
