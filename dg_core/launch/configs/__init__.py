"""accelerate config files for dg_core.launch (package data)."""
