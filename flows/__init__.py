"""Prefect flows: the monthly mosaic and the demo that runs it on a synthetic month."""
