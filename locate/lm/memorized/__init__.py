"""Localizers of memorized sequences over MLP neurons (Chang et al. 2024, MemPi)."""
