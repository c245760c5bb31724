"""KFP component: report (see README.md)."""
