"""KFP component: diagnose (see README.md)."""
