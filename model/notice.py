"""The words every generated image carries: in PNG text, DICOM comments and the checkpoint's config.

A module of its own, without torch, so that code that only writes files (the worker's outputs)
marks them with the same text the model library does.
"""

SYNTHETIC_NOTICE = "SYNTHETIC image made by whatif-cxr; not a patient image; not for clinical use"
