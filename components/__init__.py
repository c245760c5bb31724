"""Thin Kubeflow components, one per stage: each builds its stage's Config from KFP parameters and calls dg_core."""
