"""OmniCloudMask inference with patches batched across scene windows, and so across tiles.

Tiles mask each scene window as its read finishes, several tiles at once in one process. Run window
by window, the model would see one window's patches at a time, with a partial last batch for each.
Here each window cuts and normalises its own patches in its own thread (CPU work that runs as wide as
the tiles do) and hands them to the process's one `PatchBatcher` for its model configuration. The
batcher's single inference thread fills batches of `batch_size` patches from whichever windows are
waiting, runs the models, and adds each prediction into its window's tracker, exactly as
OmniCloudMask's `predict_from_array` does for one window (its `coordinator`): the same patch
positions (`make_patch_indexes`, `get_patch`), blending (`create_gradient_mask`, `store_results`),
class choice (`postprocess_preds`) and nodata masking (`mask_prediction`). Each window being masked
holds its tracker on the device (4 classes x its model pixels, in the inference dtype) until its last
patch is stored; a tile masks one window at a time, so trackers in memory are at most tiles in flight.

GPU. One inference thread per model configuration per process is the only code that runs the model.
On CUDA it holds one slot of the Prefect global concurrency limit `gpu` (`GPU_CONCURRENCY_LIMIT`)
from the moment work arrives until it has been idle `IDLE_SLOT_RELEASE_S`, so processes (Dask
workers) sharing a GPU take turns by bursts, while tiles within a process share the slot and their
patches share batches. Create the limit once per Prefect server with
`prefect gcl create gpu --limit 1` (one slot per GPU); while it does not exist Prefect logs a warning
and inference goes on. On CUDA out-of-memory the batcher halves its batch size, down to 1, before
failing the windows of that batch with `InferenceOutOfMemory`.
"""

import contextvars
import threading
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from queue import Empty, Queue
from types import ModuleType

import numpy as np
import torch
from prefect.concurrency.sync import concurrency

from tasks.core.errors import InferenceOutOfMemory
from tasks.core.logs import stage_logger
from tasks.core.torch_compat import ensure_torchvision_importable

__all__ = [
    "GPU_CONCURRENCY_LIMIT",
    "IDLE_SLOT_RELEASE_S",
    "MODEL_SOURCE",
    "Patch",
    "PatchBatcher",
    "device_slot",
    "load_omnicloudmask",
    "patch_batcher",
    "predict_with_fallback",
]

GPU_CONCURRENCY_LIMIT = "gpu"
OCM_CLASSES = 4
"""Classes OmniCloudMask predicts: 0 clear, 1 thick cloud, 2 thin cloud, 3 shadow."""
MODEL_SOURCE = "hugging_face"
"""OmniCloudMask's default weights source; weights are checked on disk before a batcher loads them."""
LINGER_S = 0.05
"""How long the inference thread waits for more patches before running a partial batch, in seconds."""
IDLE_SLOT_RELEASE_S = 1.0
"""How long the inference thread keeps the GPU slot without work, in seconds."""


def load_omnicloudmask() -> ModuleType:
    """The `omnicloudmask` package, importable also next to a CPU-only torch."""
    ensure_torchvision_importable()
    import omnicloudmask
    import omnicloudmask.download_models

    return omnicloudmask


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA out-of-memory error, typed or as torch's plain RuntimeError message."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)
    )


def predict_with_fallback(predict: Callable[[int], torch.Tensor], batch_size: int) -> torch.Tensor:
    """`predict(batch_size)`, halving the batch size on out-of-memory down to 1, then `InferenceOutOfMemory`."""
    while True:
        try:
            return predict(batch_size)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            if batch_size == 1:
                raise InferenceOutOfMemory(
                    "cloud mask inference ran out of GPU memory even at batch size 1; lower patch_size, "
                    "free the GPU (another process may hold it), or use device='cpu'"
                ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        batch_size = max(1, batch_size // 2)
        stage_logger(__name__).warning("cloud mask inference ran out of GPU memory; retrying at batch size %d", batch_size)


def device_slot(device: torch.device) -> AbstractContextManager:
    """One slot of the Prefect global concurrency limit `gpu` for a CUDA device, else nothing.

    `strict=False`: while the limit does not exist Prefect logs a warning and inference goes on.
    """
    if device.type == "cuda":
        return concurrency(GPU_CONCURRENCY_LIMIT, occupy=1, strict=False)
    return nullcontext()


@dataclass(eq=False)
class WindowPrediction:
    """The model's summed, blended predictions over one window (classes, y, x, on the inference
    device), filled by the inference thread; the window's thread waits on `done`."""

    tracker: torch.Tensor
    gradient: torch.Tensor
    pending: int = 0
    closed: bool = False
    error: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)

    def expect_patch(self) -> None:
        with self.lock:
            self.pending += 1

    def close(self) -> None:
        """No more patches will come; `done` is set once those already handed over are stored."""
        with self.lock:
            self.closed = True
            if self.pending == 0:
                self.done.set()

    def patch_finished(self, error: BaseException | None = None) -> None:
        with self.lock:
            self.pending -= 1
            self.error = self.error or error
            if self.closed and self.pending == 0:
                self.done.set()


@dataclass(frozen=True, eq=False)
class Patch:
    """One normalised patch (band, y, x, float32) of a window, at `index` (top, bottom, left, right)."""

    window: WindowPrediction
    index: tuple[int, int, int, int]
    pixels: np.ndarray

    @property
    def side_px(self) -> int:
        return self.pixels.shape[-1]


class PatchBatcher:
    """Runs OmniCloudMask's models on patches from any number of windows, `batch_size` at a time,
    in one daemon thread per batcher. Get one with `patch_batcher`; call `predict` from any thread."""

    def __init__(
        self, models: list[torch.nn.Module], device: torch.device, dtype: torch.dtype, batch_size: int, no_data_value: int
    ) -> None:
        self.models = models
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.no_data_value = no_data_value
        self.patches: Queue[Patch] = Queue(maxsize=batch_size)
        # The thread runs in a copy of the creating thread's context: Prefect's settings and client
        # for the GPU slot, and log lines to the run that started it.
        thread_context = contextvars.copy_context()
        threading.Thread(target=thread_context.run, args=(self._serve,), name="ocm-inference", daemon=True).start()

    def predict(self, red_green_nir: np.ndarray, patch_size: int, patch_overlap: int) -> np.ndarray:
        """OmniCloudMask classes (uint8, y, x) of a (3, y, x) array, `predict_from_array`'s output[0]."""
        ocm = load_omnicloudmask()
        patch_overlap, patch_size = ocm.cloud_mask.check_patch_size(red_green_nir, self.no_data_value, patch_size, patch_overlap)
        window = WindowPrediction(
            tracker=torch.zeros((OCM_CLASSES, *red_green_nir.shape[1:]), dtype=self.dtype, device=self.device),
            gradient=ocm.model_utils.create_gradient_mask(patch_size, patch_overlap, device=self.device, dtype=self.dtype),
        )
        height, width = red_green_nir.shape[1:]
        handed_over: set[tuple[int, int, int, int]] = set()
        for index in ocm.raster_utils.make_patch_indexes(width, height, patch_size, patch_overlap):
            pixels, shifted_index = ocm.raster_utils.get_patch(red_green_nir, index, self.no_data_value)
            if pixels is None or shifted_index in handed_over:  # all nodata, or shifted onto another
                continue
            handed_over.add(shifted_index)
            window.expect_patch()
            self.patches.put(Patch(window, shifted_index, pixels))
        window.close()
        window.done.wait()
        if window.error is not None:
            raise window.error
        classes = ocm.cloud_mask.postprocess_preds(window.tracker, export_confidence=False, softmax_output=True)
        masked, _ = ocm.raster_utils.mask_prediction(red_green_nir, classes.numpy(force=True), self.no_data_value)
        return masked[0]

    def _serve(self) -> None:
        """The inference thread: gathers patches by side and runs a batch when one is full, or the
        fullest partial one after `LINGER_S` without new patches; holds the GPU slot while busy."""
        waiting: dict[int, list[Patch]] = defaultdict(list)
        slot: ExitStack | None = None
        while True:
            timeout = LINGER_S if waiting else (IDLE_SLOT_RELEASE_S if slot else None)
            try:
                patch = self.patches.get(timeout=timeout)
            except Empty:
                if waiting:
                    self._run(waiting.pop(max(waiting, key=lambda side: len(waiting[side]))))
                elif slot:
                    slot.close()  # idle: another process's batcher may have the GPU
                    slot = None
                continue
            if slot is None:
                slot = self._take_slot()
            same_side = waiting[patch.side_px]
            same_side.append(patch)
            if len(same_side) >= self.batch_size:
                self._run(waiting.pop(patch.side_px))

    def _take_slot(self) -> ExitStack:
        """The GPU slot, held until the returned stack is closed; without it (Prefect unreachable)
        inference goes on, with a warning, rather than leave windows waiting."""
        slot = ExitStack()
        try:
            slot.enter_context(device_slot(self.device))
        except Exception as error:  # any failure to reach Prefect must not stop inference
            stage_logger(__name__).warning("running cloud mask inference without the %r slot: %s", GPU_CONCURRENCY_LIMIT, error)
        return slot

    def _run(self, batch: list[Patch]) -> None:
        """Infer one batch and store each prediction in its window; errors go to the batch's windows."""
        model_utils = load_omnicloudmask().model_utils
        try:
            predictions = predict_with_fallback(lambda size: self._infer(batch, size), self.batch_size)
            for patch, prediction in zip(batch, predictions, strict=True):
                model_utils.store_results(prediction[None], [patch.index], patch.window.tracker, patch.window.gradient)
        except BaseException as error:  # every waiting window must wake, whatever went wrong
            for patch in batch:
                patch.window.patch_finished(error)
            return
        for patch in batch:
            patch.window.patch_finished()

    def _infer(self, batch: list[Patch], batch_size: int) -> torch.Tensor:
        """Mean model prediction (patch, class, y, x) of the batch, run `batch_size` patches at a time."""
        self.batch_size = batch_size  # an out-of-memory halving holds for later batches too
        model_utils = load_omnicloudmask().model_utils
        chunks = []
        for start in range(0, len(batch), batch_size):
            pixels = np.stack([patch.pixels for patch in batch[start : start + batch_size]])
            model_input = torch.as_tensor(pixels).to(device=self.device, dtype=self.dtype)
            chunks.append(model_utils.infer_batch(self.models, model_input))
        return torch.cat(chunks)


_batchers_lock = threading.Lock()


@cache
def _cached_batcher(
    device: torch.device, dtype: torch.dtype, model_dir: Path, model_version: float, batch_size: int, no_data_value: int
) -> PatchBatcher:
    models = load_omnicloudmask().cloud_mask.collect_models(
        custom_models=None,
        inference_device=device,
        inference_dtype=dtype,
        source=MODEL_SOURCE,
        destination_model_dir=model_dir,
        model_version=model_version,
    )
    return PatchBatcher(models, device, dtype, batch_size, no_data_value)


def patch_batcher(
    device: torch.device, dtype: str, model_dir: Path, model_version: float, batch_size: int, no_data_value: int
) -> PatchBatcher:
    """This process's batcher for a model configuration, created (models loaded) on first use.

    The caller checks the weights are on disk first: loading them here must not reach the hub.
    """
    torch_dtype = load_omnicloudmask().model_utils.get_torch_dtype(dtype)
    with _batchers_lock:
        return _cached_batcher(device, torch_dtype, model_dir, model_version, batch_size, no_data_value)
