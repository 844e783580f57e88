"""Where pixels are: the AOI, CRSs, the target grid and its tiles."""
