"""KFP component: evaluate (see README.md)."""
