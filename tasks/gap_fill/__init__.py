"""Filling a month's unobserved pixels from its neighbours' published observations."""
