"""KFP component: gate (see README.md)."""
