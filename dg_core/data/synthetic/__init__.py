"""Offline synthetic task families: seeded, any size, deterministic."""
