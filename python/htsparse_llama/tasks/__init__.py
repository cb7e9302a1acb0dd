"""Prompts whose answer is known, for the benchmarks and calibration: text
retrieval over a long log marked sparse (text), and needle frames put into a
video (needle)."""
