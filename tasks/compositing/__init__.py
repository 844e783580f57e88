"""Per-pixel percentiles of the clear observations and spectral indices."""
