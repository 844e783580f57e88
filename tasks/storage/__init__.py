"""Where bytes go: GDAL's environment, the workspace, free disk space."""
