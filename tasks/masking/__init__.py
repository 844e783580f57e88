"""Clouds and shadows: the masker registry, the mask stage, SCL, OmniCloudMask, the temporal check."""
