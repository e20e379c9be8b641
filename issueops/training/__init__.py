"""Fitting only: train.py dispatches a spec to supervised, torch_mlp, unsupervised or reinforcement/.

Nothing here imports evaluation/, pipeline/ or packaging/.
"""
