"""KFP component: train (see README.md)."""
