"""A month's files: COGs, mosaic indexes, quicklook, metadata.json and the month stage."""
