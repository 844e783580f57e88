"""A month cut into tiles: the plan, tile records and histograms, building and refilling a tile."""
