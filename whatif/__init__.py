"""The `whatif` command line: one entry point for every part of whatif-cxr.

Each command group lives in its own module and imports its heavy dependencies only when it
runs, so `whatif --help` is instant and a bad argument fails before anything loads.
"""
