"""KFP component: publish (see README.md)."""
