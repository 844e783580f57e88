"""The STAC Item of a month and the Collection of an AOI, validated offline."""
