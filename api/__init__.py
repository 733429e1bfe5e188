"""whatif-cxr API (FastAPI): accepts a radiograph and a target, enqueues a job, serves its state and results.

This package never imports torch: it validates, stores and enqueues; workers compute.
"""
