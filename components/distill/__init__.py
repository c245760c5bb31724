"""KFP component: distill (see README.md)."""
