"""Typed, frozen settings of each stage.

Each stage function receives only its own model; the flow's parameter model (issue: orchestration)
composes them, so the Prefect UI renders one validated form. Models are frozen and forbid unknown
fields, so a typo in a deployment's parameters fails before any work starts.
"""

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.masking.registry import masker_names

__all__ = [
    "EARTH_SEARCH_COLLECTION",
    "CompositeSettings",
    "Device",
    "FrozenSettings",
    "GridSettings",
    "IndexName",
    "MaskSettings",
    "ReadSettings",
    "SearchSettings",
    "TemporalSettings",
    "TileSettings",
]

EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"
EARTH_SEARCH_COLLECTION = "sentinel-2-c1-l2a"

Device = Literal["auto", "cuda", "cpu"]
IndexName = Literal["ndvi"]
"""The spectral indices a run can add (`tasks.compositing.indices.SPECTRAL_INDICES` defines them)."""
Percentile = Annotated[float, Field(ge=0, le=100)] | Literal["median"]
Resampling = Literal["nearest", "bilinear", "cubic"]


class FrozenSettings(BaseModel):
    """Base of every settings model: immutable, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class GridSettings(FrozenSettings):
    """Where the output pixels lie."""

    target_crs: str | None = Field(
        None,
        description="CRS of the output grid, e.g. 'EPSG:32633', 'EPSG:5070', 'EPSG:4326'. "
        "None: the UTM zone of the AOI centroid.",
    )
    resolution_m: float = Field(
        10.0,
        gt=0,
        le=10_000,
        description="Pixel size in metres. A projected CRS takes it in its own linear unit "
        "(converted from metres when that unit is not the metre); a geographic CRS gets "
        "the equivalent in degrees of latitude.",
    )


class SearchSettings(FrozenSettings):
    """Where scenes come from and which ones are kept."""

    stac_api_url: str = Field(EARTH_SEARCH_URL, description="STAC API root URL.")
    collection: str = Field(EARTH_SEARCH_COLLECTION, description="Sentinel-2 L2A collection id.")
    item_collection_path: str | None = Field(
        None,
        description="A local ItemCollection / GeoJSON FeatureCollection of items used instead of "
        "the API (air-gapped runs, the demo); filtered by AOI and month locally.",
    )
    max_cloud_cover: float = Field(
        80.0, ge=0, le=100, description="Largest scene-level eo:cloud_cover kept, in percent."
    )
    page_size: int = Field(100, ge=1, le=1000, description="Items per STAC API page.")


class ReadSettings(FrozenSettings):
    """How each scene's AOI window is read onto the grid."""

    reflectance_resampling: Resampling = Field(
        "bilinear", description="Resampling of reflectance bands onto the grid (SCL is always nearest)."
    )
    read_attempts: int = Field(
        8,
        ge=1,
        le=20,
        description="Attempts per asset on transient failures (connection refused or reset, timeouts, HTTP 5xx/429); "
        "a permanent failure (missing, forbidden, truncated, not a GeoTIFF) ends at its first attempt.",
    )
    retry_base_delay_s: float = Field(
        1.0, ge=0, le=60, description="First retry delay in seconds; doubles each attempt, with jitter."
    )
    retry_max_delay_s: float = Field(
        16.0, ge=0, le=600, description="Longest delay between two attempts, in seconds, before jitter."
    )
    block_size: int = Field(
        2048, ge=256, le=8192, description="Rows and columns warped per block; bounds read memory."
    )


class TemporalSettings(FrozenSettings):
    """The temporal check of the `...+temporal` maskers (`tasks.masking.temporal`): each observation of a pixel
    against the pixel's clear background over the month. Reflectance is surface reflectance (DN / 10000)."""

    background_percentile: float = Field(
        25.0,
        ge=0,
        le=50,
        description="Per-band percentile (0..50) of a pixel's usable observations taken as its clear background. "
        "25: with the 5 to 7 dates of a month, one or two missed clouds (bright) or shadows (dark) leave it on a "
        "clear observation.",
    )
    min_observations: int = Field(
        2,
        ge=2,
        le=255,
        description="Usable observations a pixel needs for the check; pixels with fewer are left as they are. "
        "2: of two observations, a missed cloud still stands 3/4 of its excess above the 25th percentile, so it "
        "is found (a shadow needs 3: with 2 the background lies too close to it). On synthetic months 3 left "
        "5 to 7 times as many cloudy observations in the composite (pixels seen clear twice are common).",
    )
    cloud_blue_excess: float = Field(
        0.02,
        gt=0,
        le=1,
        description="Blue reflectance above the background beyond which an observation may be cloud (with "
        "`cloud_visible_excess`). 0.02: about twice a clear date's usual blue variation, while the faintest "
        "thin cloud SCL misses (opacity 0.15) adds about 0.045 over bright soil and more over darker ground.",
    )
    cloud_visible_excess: float = Field(
        0.015,
        gt=0,
        le=1,
        description="Mean red, green and blue reflectance above the background beyond which an observation is "
        "cloud (with `cloud_blue_excess`). 0.015: clouds brighten every visible band; a change of the ground "
        "(harvest, flooding) seldom brightens all three at once.",
    )
    shadow_nir_ratio: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="An observation whose NIR is below this fraction of the background's NIR is shadow (relative, "
        "so dark water's noise does not trip it as an absolute drop would elsewhere). 0.6: a cloud shadow keeps "
        "roughly 0.2-0.5 of the NIR, a month of crop growth or senescence seldom loses 40 %.",
    )


class MaskSettings(FrozenSettings):
    """How clouds and shadows are found."""

    masker: str = Field(
        "ocm+scl",
        description="A registered masker (tasks.masking.registry): 'ocm+scl' OmniCloudMask combined with SCL, 'ocm' "
        "OmniCloudMask alone, 'scl' SCL alone (no model), each of them with '+temporal' (e.g. 'scl+temporal': also "
        "drops observations much brighter or darker than the pixel's month, tasks.masking.temporal), or one of your own.",
        json_schema_extra=lambda schema: schema.update(enum=list(masker_names())),  # a choice in the Prefect UI
    )
    resolution_m: Literal[10, 20] = Field(
        10, description="Resolution OmniCloudMask runs at; 20 averages the input down and brings the mask back by nearest."
    )
    batch_size: int = Field(8, ge=1, le=256, description="Patches per inference batch; halved on CUDA out-of-memory.")
    inference_dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Inference precision.")
    patch_size: int = Field(1000, ge=32, le=4000, description="OmniCloudMask patch size in pixels.")
    patch_overlap: int = Field(300, ge=0, le=2000, description="Overlap between patches in pixels.")
    device: Device = Field("auto", description="Inference device; auto = CUDA when present, else CPU.")
    model_version: float | None = Field(None, description="OmniCloudMask model version; None = the library's default.")
    model_dir: str | None = Field(
        None, description="Directory of the model weights; None = $OMNICLOUDMASK_MODEL_DIR, else the library's default."
    )
    scl_invalid_classes: tuple[int, ...] = Field(
        (0, 1, 3, 8, 9, 10, 11),
        description="SCL classes treated as unusable: no data, saturated, shadow, cloud medium/high, cirrus, snow.",
    )
    buffer_m: float = Field(0.0, ge=0, le=5000, description="Dilation of cloud and shadow, in metres.")
    temporal: TemporalSettings = Field(
        default_factory=TemporalSettings,
        description="Thresholds of the temporal cloud and shadow check of the '...+temporal' maskers.",
    )

    @field_validator("masker")
    @classmethod
    def _registered_masker(cls, name: str) -> str:
        if name not in masker_names():
            raise ValueError(f"unknown masker {name!r}; use one of {', '.join(masker_names())}")
        return name


class TileSettings(FrozenSettings):
    """How the grid is cut into output tiles, each read, masked, composited and written on its own."""

    tile_size_px: int = Field(
        4096,
        ge=128,
        le=16_384,
        description="Edge of an output tile in grid pixels. Tiles start at the grid's top-left corner, so an AOI "
        "gets the same tiles every month; memory and scratch disk grow with tile size x tiles in flight.",
    )
    single_cog_max_pixels: float = Field(
        1.6e7,
        ge=0,
        description="A tiled AOI of at most this many grid pixels (default: about one default tile) also gets one "
        "mosaic COG and one count COG besides its tiles and mosaic index; building them takes local scratch of "
        "about their size. An AOI of one tile always gets them.",
    )


class CompositeSettings(FrozenSettings):
    """How the clear observations become one value per pixel."""

    percentile: Percentile = Field(25.0, description="Per-band percentile of valid observations, 0..100; 'median' = 50.")
    block_size: int = Field(1024, ge=64, le=8192, description="Output block edge in pixels; bounds memory.")
    device: Device = Field("auto", description="Compute device; auto = CUDA when present, else CPU.")
    indices: tuple[IndexName, ...] = Field(
        (),
        description="Spectral indices to add as products, e.g. ['ndvi']: each composited from its per-observation "
        "values, written as an int16 COG (index x 10000, nodata -32768).",
        json_schema_extra=lambda schema: schema.update(items={"enum": list(get_args(IndexName)), "type": "string"}),
    )
    index_percentile: Percentile = Field(
        "median", description="Percentile of each index's per-observation values, 0..100; 'median' = 50."
    )

    @field_validator("indices")
    @classmethod
    def _once_each(cls, indices: tuple[IndexName, ...]) -> tuple[IndexName, ...]:
        """Each index once, in the order given."""
        return tuple(dict.fromkeys(indices))
