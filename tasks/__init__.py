"""Pure stage functions of the monthly mosaic, each module one stage, with thin Prefect task wrappers."""
