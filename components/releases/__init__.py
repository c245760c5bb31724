"""KFP component: releases (see README.md)."""
