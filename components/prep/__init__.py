"""KFP component: prep (see README.md)."""
