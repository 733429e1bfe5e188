"""whatif-cxr training: data (the phantom and the real dataset layouts), trainers and evaluation.

Imports the model library, never the reverse.
"""
