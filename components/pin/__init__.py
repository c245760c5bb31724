"""KFP component: pin (see README.md)."""
