"""Experiment orchestration for comparing normalization placements."""
