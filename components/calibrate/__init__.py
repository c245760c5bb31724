"""KFP component: calibrate (see README.md)."""
