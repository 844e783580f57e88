"""Finding scenes in a STAC API and reading their windows, with retries and named failures."""
