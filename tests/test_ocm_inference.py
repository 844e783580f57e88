"""OmniCloudMask inference batched across windows (`tasks.masking.ocm_inference`), on CPU with random v4 weights.

The library's own `predict_from_array`, window by window, is the reference for every result.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.mask import write_random_weights
from tasks.core.errors import InferenceOutOfMemory
from tasks.masking import ocm_inference
from tasks.masking.ocm_inference import (
    GPU_CONCURRENCY_LIMIT,
    MODEL_SOURCE,
    PatchBatcher,
    device_slot,
    load_omnicloudmask,
    predict_with_fallback,
)

MODEL_VERSION = 4.0
PATCH_SIZE = 64
PATCH_OVERLAP = 16
CPU = torch.device("cpu")
PREDICT_TIMEOUT_S = 60.0
"""How long a test waits for `predict` (a window of a few patches takes well under a second)."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[torch.nn.Module]:
    """The v4 models with random weights, loaded through the library's real loader, offline."""
    model_dir = tmp_path_factory.mktemp("ocm_weights")
    write_random_weights(model_dir, MODEL_VERSION)
    return load_omnicloudmask().cloud_mask.collect_models(
        custom_models=None,
        inference_device=CPU,
        inference_dtype=torch.float32,
        source=MODEL_SOURCE,
        destination_model_dir=model_dir,
        model_version=MODEL_VERSION,
    )


def red_green_nir(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A (3, y, x) uint16 window of reflectance 1..9000 with smooth structure the model reacts to."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 9000, size=(3, shape[0] // 8 + 1, shape[1] // 8 + 1))
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, : shape[0], : shape[1]]
    return (smooth + rng.integers(0, 200, size=(3, *shape))).astype(np.uint16)


def library_classes(window: np.ndarray, models: list[torch.nn.Module]) -> np.ndarray:
    """OmniCloudMask's own classes of one window (y, x)."""
    return load_omnicloudmask().predict_from_array(
        window,
        patch_size=PATCH_SIZE,
        patch_overlap=PATCH_OVERLAP,
        batch_size=2,
        inference_device=CPU,
        custom_models=models,
        no_data_value=0,
    )[0]


def predicted(batcher: PatchBatcher, windows: list[np.ndarray]) -> list[np.ndarray]:
    """The batcher's classes of each window, all windows predicted at once from their own threads.

    `predict` waits on its window's event without a bound: a window the inference thread never
    finishes fails here after `PREDICT_TIMEOUT_S` instead of hanging the test (daemon threads, so a
    stuck one cannot hold the interpreter's exit either).
    """
    results: list[np.ndarray | BaseException | None] = [None] * len(windows)

    def predict(position: int) -> None:
        try:
            results[position] = batcher.predict(windows[position], PATCH_SIZE, PATCH_OVERLAP)
        except BaseException as error:  # handed to the test thread
            results[position] = error

    threads = [threading.Thread(target=predict, args=(position,), daemon=True) for position in range(len(windows))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PREDICT_TIMEOUT_S
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    unfinished = [position for position, thread in enumerate(threads) if thread.is_alive()]
    assert not unfinished, f"predict of windows {unfinished} did not return within {PREDICT_TIMEOUT_S} s"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def predicted_one(batcher: PatchBatcher, window: np.ndarray) -> np.ndarray:
    """The batcher's classes of one window, within `PREDICT_TIMEOUT_S`."""
    (classes,) = predicted(batcher, [window])
    return classes


def record_batches(monkeypatch: pytest.MonkeyPatch, fail: Callable[[int], BaseException | None] = lambda size: None) -> list[int]:
    """Patches per model call, from here on; `fail(size)` may return an error for a call to raise."""
    model_utils = load_omnicloudmask().model_utils
    real_infer = model_utils.infer_batch
    sizes: list[int] = []

    def infer(models: list[torch.nn.Module], patch_batch: torch.Tensor) -> torch.Tensor:
        sizes.append(len(patch_batch))
        error = fail(len(patch_batch))
        if error is not None:
            raise error
        return real_infer(models, patch_batch)

    monkeypatch.setattr(model_utils, "infer_batch", infer)
    return sizes


def test_one_window_matches_the_library(models: list[torch.nn.Module]) -> None:
    window = red_green_nir((150, 170), seed=1)
    window[:, :40, :50] = 0  # nodata: the library shifts patches off it, and masks it out
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=3, no_data_value=0)
    classes = predicted_one(batcher, window)
    expected = library_classes(window, models)
    assert classes.dtype == np.uint8 and classes.shape == window.shape[1:]
    assert len(np.unique(expected)) > 1, "random weights should give more than one class"
    np.testing.assert_array_equal(classes, expected)


def test_windows_from_different_threads_share_batches(monkeypatch: pytest.MonkeyPatch, models: list[torch.nn.Module]) -> None:
    monkeypatch.setattr(ocm_inference, "LINGER_S", 5.0)  # a partial batch waits for the other window
    windows = [red_green_nir((100, 100), seed=2), red_green_nir((100, 100), seed=3)]  # 4 patches each
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=8, no_data_value=0)
    sizes = record_batches(monkeypatch)
    classes = predicted(batcher, windows)
    assert sizes == [8], "both windows' patches in one batch"
    for window, window_classes in zip(windows, classes, strict=True):
        np.testing.assert_array_equal(window_classes, library_classes(window, models))


def test_a_lone_window_runs_its_partial_batch_after_lingering(monkeypatch: pytest.MonkeyPatch, models: list[torch.nn.Module]) -> None:
    """The batch never fills: the window still finishes. Its 4 patches are one batch unless the window's
    thread paused longer than `LINGER_S` between two of them (a loaded machine), so only partial
    batches holding each patch once are asserted."""
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=32, no_data_value=0)
    window = red_green_nir((100, 100), seed=4)
    expected = library_classes(window, models)
    sizes = record_batches(monkeypatch)
    np.testing.assert_array_equal(predicted_one(batcher, window), expected)
    assert sum(sizes) == 4 and max(sizes) < 32, sizes


def test_patch_sizes_the_library_adjusts_are_batched_apart(monkeypatch: pytest.MonkeyPatch, models: list[torch.nn.Module]) -> None:
    """A window narrower than the patch gets smaller patches (the library's rule); they cannot share a
    tensor with full-size ones, and each window still matches the library."""
    windows = [red_green_nir((100, 100), seed=5), red_green_nir((48, 100), seed=6)]
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=8, no_data_value=0)
    sizes = record_batches(monkeypatch)
    with pytest.warns(UserWarning, match="Patch size too large"):
        classes = predicted(batcher, windows)
    assert sum(sizes) == 4 + 3 and len(sizes) >= 2, sizes  # more when a window's thread paused past LINGER_S
    for window, window_classes in zip(windows, classes, strict=True):
        np.testing.assert_array_equal(window_classes, library_classes(window, models))


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"),
    ],
)
def test_out_of_memory_halves_the_batch_for_good(monkeypatch: pytest.MonkeyPatch, models: list[torch.nn.Module], error) -> None:
    monkeypatch.setattr(ocm_inference, "LINGER_S", 5.0)
    windows = [red_green_nir((100, 100), seed=7), red_green_nir((100, 100), seed=8)]
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=8, no_data_value=0)
    sizes = record_batches(monkeypatch, fail=lambda size: error() if size > 4 else None)
    classes = predicted(batcher, windows)
    assert sizes == [8, 4, 4] and batcher.batch_size == 4
    for window, window_classes in zip(windows, classes, strict=True):
        np.testing.assert_array_equal(window_classes, library_classes(window, models))


def test_an_inference_error_reaches_the_windows_and_the_batcher_goes_on(monkeypatch: pytest.MonkeyPatch, models: list[torch.nn.Module]) -> None:
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=4, no_data_value=0)
    failing = [True]
    record_batches(monkeypatch, fail=lambda size: RuntimeError("Expected all tensors to be on the same device") if failing[0] else None)
    window = red_green_nir((100, 100), seed=9)
    with pytest.raises(RuntimeError, match="same device"):
        predicted_one(batcher, window)
    failing[0] = False
    np.testing.assert_array_equal(predicted_one(batcher, window), library_classes(window, models))


def test_an_all_nodata_window_needs_no_inference(monkeypatch: pytest.MonkeyPatch, models: list[torch.nn.Module]) -> None:
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=4, no_data_value=0)
    sizes = record_batches(monkeypatch)
    classes = predicted_one(batcher, np.zeros((3, 80, 80), np.uint16))
    assert sizes == [] and not classes.any()


# --- out-of-memory fallback --------------------------------------------------------------------


def test_out_of_memory_at_batch_one_is_one_line_error() -> None:
    calls: list[int] = []

    def always_oom(batch_size: int) -> torch.Tensor:
        calls.append(batch_size)
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(InferenceOutOfMemory) as raised:
        predict_with_fallback(always_oom, 8)
    assert calls == [8, 4, 2, 1]
    assert "\n" not in str(raised.value) and "batch size 1" in str(raised.value)


def test_other_runtime_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken(batch_size: int) -> torch.Tensor:
        calls.append(batch_size)
        raise RuntimeError("Expected all tensors to be on the same device")

    with pytest.raises(RuntimeError, match="same device"):
        predict_with_fallback(broken, 8)
    assert calls == [8]


# --- GPU slot (Prefect global concurrency limit) -----------------------------------------------


def gpu_slots_in_use() -> int | None:
    """Active slots of the Prefect global concurrency limit `gpu`, or None when it does not exist."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(GPU_CONCURRENCY_LIMIT).active_slots
        except ObjectNotFound:
            return None


def test_a_cuda_device_takes_the_gpu_slot_and_cpu_does_not(prefect_harness: None) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_CONCURRENCY_LIMIT, limit=1))
    try:
        with device_slot(torch.device("cuda")):
            held_on_cuda = gpu_slots_in_use()
        with device_slot(CPU):
            held_on_cpu = gpu_slots_in_use()
        assert (held_on_cuda, held_on_cpu, gpu_slots_in_use()) == (1, 0, 0)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(GPU_CONCURRENCY_LIMIT)


def test_without_the_gpu_limit_a_cuda_slot_is_a_warning(prefect_harness: None, caplog: pytest.LogCaptureFixture) -> None:
    assert gpu_slots_in_use() is None
    with caplog.at_level(logging.WARNING), device_slot(torch.device("cuda")):
        assert gpu_slots_in_use() is None
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(repr(GPU_CONCURRENCY_LIMIT) in message and "do not exist" in message for message in warnings), warnings


def test_the_inference_thread_holds_the_slot_while_busy_and_frees_it_when_idle(
    monkeypatch: pytest.MonkeyPatch, models: list[torch.nn.Module]
) -> None:
    """No outcome here depends on how fast a loaded machine runs the test: the two windows that must
    share a slot come back under an idle time as long as the predict timeout, and the release is
    awaited on an event the slot sets when freed. The model only ever runs while the slot is held."""
    monkeypatch.setattr(ocm_inference, "LINGER_S", PREDICT_TIMEOUT_S)  # every batch here fills: none runs partial
    monkeypatch.setattr(ocm_inference, "IDLE_SLOT_RELEASE_S", PREDICT_TIMEOUT_S)
    events: list[str] = []
    slot_free = threading.Event()

    @contextmanager
    def recorded_slot(device: torch.device) -> Iterator[None]:
        events.append("taken")
        slot_free.clear()
        yield
        events.append("freed")
        slot_free.set()

    monkeypatch.setattr(ocm_inference, "device_slot", recorded_slot)
    sizes = record_batches(monkeypatch, fail=lambda size: None if events[-1:] == ["taken"] else AssertionError(events))
    batcher = PatchBatcher(models, CPU, torch.float32, batch_size=2, no_data_value=0)
    window = red_green_nir((100, 100), seed=10)
    predicted_one(batcher, window)
    predicted_one(batcher, window)  # within the idle time: the same slot
    assert sizes == [2, 2, 2, 2] and events == ["taken"]

    monkeypatch.setattr(ocm_inference, "IDLE_SLOT_RELEASE_S", 0.3)  # read once the next window wakes the thread
    predicted_one(batcher, window)
    assert slot_free.wait(PREDICT_TIMEOUT_S), f"the slot was not freed once idle: {events}"
    # Freed at least once; more often only if this window's thread paused past the idle time.
    assert events == ["taken", "freed"] * (len(events) // 2), events
    freed_at = len(events)
    predicted_one(batcher, window)
    assert events[freed_at:][:1] == ["taken"], events


def test_one_batcher_per_model_configuration_in_a_process(tmp_path: Path) -> None:
    write_random_weights(tmp_path, MODEL_VERSION)
    first = ocm_inference.patch_batcher(CPU, "fp32", tmp_path, MODEL_VERSION, 4, 0)
    assert ocm_inference.patch_batcher(CPU, "fp32", tmp_path, MODEL_VERSION, 4, 0) is first
    assert ocm_inference.patch_batcher(CPU, "fp32", tmp_path, MODEL_VERSION, 8, 0) is not first
