"""A Dask cluster as a user runs one: a `dask scheduler` and `dask worker` programs on 127.0.0.1.

`DaskCluster(work_dir, workers=2, environment=...)` starts the scheduler on a port of the kernel's
choosing (`--port 0`; it writes the address it bound to its `--scheduler-file`), then each
worker as a program of its own (`--nworkers 1 --nthreads 1`, a nanny and its worker process, in a
process group of its own), with this process's environment (the AWS variables of a moto fixture
included) plus `environment` (PREFECT_API_URL of the test's API, say), and waits until every worker
has joined. A flow reaches it by `runner.dask_address = cluster.address`. An observing client
answers which task keys each worker holds finished and which it is running; `kill_worker(i)` kills
worker i's program whole, as when its machine is lost. `stop()` ends every program. Every wait is bounded.
"""

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import distributed

from tasks.testing import PROJECT_ROOT
from tasks.testing.prefect_server import QUIET_ENVIRONMENT, BackgroundProcess
from tasks.testing.servers import LOOPBACK

__all__ = ["DaskCluster"]

DASK_COMMAND = str(Path(sys.executable).parent / "dask")
"""The `dask` command of the environment running this."""
START_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
WORKER_DEATH_TIMEOUT_S = 60
"""A worker whose scheduler is gone for this long exits by itself."""
SCHEDULER_ENVIRONMENT = {"DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
"""The scheduler hands a worker only as many tasks as it has threads, so the tasks a worker is
processing are the ones it runs (the default 1.1 queues one more on each single-thread worker)."""


class DaskClusterError(RuntimeError):
    """A program of the cluster did not start or stopped early; the message holds its log."""


class DaskCluster:
    """A scheduler and `workers` single-thread workers on 127.0.0.1; use as a context manager."""

    def __init__(self, work_dir: Path, workers: int = 2, environment: Mapping[str, str] | None = None) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self._work_dir = work_dir
        self._environment = {**os.environ, **QUIET_ENVIRONMENT, **(environment or {})}
        scheduler_file = work_dir / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        self._scheduler = self._start(
            "scheduler",
            ["scheduler", "--host", LOOPBACK, "--port", "0", "--scheduler-file", str(scheduler_file), "--no-dashboard"],
            SCHEDULER_ENVIRONMENT,
        )
        self._workers: list[BackgroundProcess] = []
        self._client: distributed.Client | None = None
        try:
            self.address = self._bound_address(scheduler_file)
            for index in range(workers):
                self._workers.append(self._start(self.worker_name(index), self._worker_arguments(index)))
            self._client = distributed.Client(self.address, timeout=CLIENT_TIMEOUT_S, set_as_default=False)
            self._client.wait_for_workers(workers, timeout=START_TIMEOUT_S)
        except (OSError, TimeoutError) as error:
            self.stop()
            raise DaskClusterError(f"the Dask cluster did not start ({error}):\n{self.logs()}") from error

    def __enter__(self) -> "DaskCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _bound_address(self, scheduler_file: Path) -> str:
        """The address the scheduler listens on, from the file it writes once it does (maybe seen half-written)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._scheduler.running and time.monotonic() < deadline:
            try:
                return str(json.loads(scheduler_file.read_text())["address"])
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"the scheduler wrote no address to {scheduler_file} (running: {self._scheduler.running})")

    @staticmethod
    def worker_name(index: int) -> str:
        return f"worker-{index}"

    def _worker_arguments(self, index: int) -> list[str]:
        name = self.worker_name(index)
        return [
            "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--name", name, "--host", LOOPBACK,
            "--no-dashboard", "--death-timeout", str(WORKER_DEATH_TIMEOUT_S),
            "--local-directory", str(self._work_dir / name),
        ]  # fmt: skip

    def _start(self, name: str, arguments: list[str], extra_environment: Mapping[str, str] | None = None) -> BackgroundProcess:
        environment = {**self._environment, **(extra_environment or {})}
        return BackgroundProcess(name, [DASK_COMMAND, *arguments], environment, self._work_dir / f"{name}.log", PROJECT_ROOT)

    @property
    def client(self) -> distributed.Client:
        """The observing client (not the flow's): it submits nothing."""
        if self._client is None:
            raise DaskClusterError("the Dask cluster is stopped")
        return self._client

    @property
    def worker_pids(self) -> list[int]:
        """The process id of each worker program (its nanny; the worker process is the nanny's child)."""
        return [worker.pid for worker in self._workers]

    def worker_running(self, index: int) -> bool:
        return self._workers[index].running

    def worker_keys(self) -> dict[int, tuple[set[str], set[str]]]:
        """{worker index: (keys of the finished tasks it holds, keys of the tasks it is running)} of each joined worker."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        held, processing = self.client.has_what(), self.client.processing()
        index_of = {self.worker_name(index): index for index in range(len(self._workers))}
        return {
            index_of[info["name"]]: (set(map(str, held.get(address, ()))), set(map(str, processing.get(address, ()))))
            for address, info in workers.items()
            if info["name"] in index_of
        }

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker `index`'s program whole (nanny and worker process): it never comes back."""
        self._workers[index].kill()

    def logs(self) -> str:
        """The tail of the scheduler's and each worker's log."""
        return "\n".join(
            f"===== {process.name} ({process.log_path}) =====\n{process.log_tail()}"
            for process in (self._scheduler, *self._workers)
        )

    def stop(self) -> None:
        """Close the observing client, stop the workers, then the scheduler."""
        if self._client is not None:
            self._client.close(timeout=CLIENT_TIMEOUT_S)
            self._client = None
        for process in (*self._workers, self._scheduler):
            process.stop()
