"""KFP component: plan (see README.md)."""
