"""A real Prefect server, its CLI and a worker, all on 127.0.0.1, for end-to-end deployment tests.

`PrefectServer(home)` runs `prefect server start` (SQLite under `home`, a `ReservedPort`, no UI) in its
own process group and waits until `/api/health` answers. Every process it starts, CLI calls and
workers alike, gets `environment()`: this process's environment (the AWS variables of a moto
fixture included) without inherited PREFECT_* variables, plus PREFECT_HOME, PREFECT_API_URL
pointing at the server and telemetry off. `stop()` ends the workers and then the server, each
process group whole; `restart()` stops the server alone and starts it again on the same port and
database (what an upgrade or a crashed API does to the runs); `logs()` is the tail of every log,
for a failing test to print.

The port is reserved rather than asked of the server (`--port 0`): `prefect server start --port 0`
does bind a port of the kernel's choosing, but prints ":0" (uvicorn's line naming the bound port is
below the server's default log level), and a restart must come back on the same port, which stays
this process's while the server is down.
"""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import psutil
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

from tasks.testing import PROJECT_ROOT
from tasks.testing.servers import LOOPBACK, ReservedPort

__all__ = ["BackgroundProcess", "PrefectServer", "flow_run_id_in"]

PREFECT_COMMAND = (sys.executable, "-m", "prefect")
SERVER_START_TIMEOUT_S = 90.0
CLI_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.5
LOG_TAIL_CHARS = 6000
WORKER_QUERY_SECONDS = 2
"""Workers ask for runs every 2 s instead of 10 s, so a test does not wait on the poll."""
FLOW_RUN_ID_PATTERN = re.compile(r"UUID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
QUIET_ENVIRONMENT = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_CLI_COLORS": "false",
    "PREFECT_CLI_WRAP_LINES": "false",
}

T = TypeVar("T")


class PrefectProcessError(RuntimeError):
    """A Prefect command failed or a background process stopped early; the message holds its output."""


class BackgroundProcess:
    """A command in its own process group, stdout and stderr to a log file; `stop()` ends the group."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                list(args), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def pid(self) -> int:
        return self._process.pid

    def kill(self) -> None:
        """SIGKILL to the process group at once, as when its machine is lost: nothing in it shuts down cleanly."""
        self._signal_group(signal.SIGKILL)
        self._process.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL to it after `STOP_TIMEOUT_S`; then SIGKILL to any
        descendant that left the group (a worker starts each flow run in a session of its own)."""
        descendants = self._descendants()
        self._signal_group(signal.SIGTERM)
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self._process.wait()
        for descendant in descendants:
            try:
                descendant.kill()
            except psutil.NoSuchProcess:
                pass

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self._process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass


class PrefectServer:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME; use as a context manager."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._port = ReservedPort()
        self.api_url = f"{self._port.url}/api"
        self._processes: list[BackgroundProcess] = []
        self._starts = 0
        self._server = self._start_server()
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "PrefectServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of every Prefect process: this one's, pointed at this server."""
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
        own = {"PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url, **QUIET_ENVIRONMENT}
        return {**inherited, **own, **(extra or {})}

    def _start(
        self, name: str, args: Sequence[str], env: Mapping[str, str], cwd: Path = PROJECT_ROOT
    ) -> BackgroundProcess:
        process = BackgroundProcess(name, args, env, self.home / f"{name}.log", cwd)
        self._processes.append(process)
        return process

    def _start_server(self) -> BackgroundProcess:
        """`prefect server start` on this server's port and home; each start logs to a file of its own."""
        self._starts += 1
        name = "server" if self._starts == 1 else f"server-{self._starts}"
        address = ["--host", LOOPBACK, "--port", str(self._port.port)]
        return self._start(name, [*PREFECT_COMMAND, "server", "start", *address], self.environment())

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL), leave it down `down_s` seconds, start it again on
        the same port and database and wait until it answers. The workers and flow runs keep running;
        whatever the server held only in memory (concurrency leases) is gone."""
        self._server.stop()
        self._processes.remove(self._server)
        time.sleep(down_s)
        self._server = self._start_server()
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with SyncPrefectClient(self.api_url) as client:
            while time.monotonic() < deadline:
                if not self._server.running:
                    raise PrefectProcessError(f"prefect server exited at start:\n{self._server.log_tail()}")
                if client.api_healthcheck() is None:
                    return
                time.sleep(POLL_INTERVAL_S)
        raise PrefectProcessError(
            f"prefect server not healthy after {SERVER_START_TIMEOUT_S:.0f} s:\n{self._server.log_tail()}"
        )

    def run(self, args: Sequence[str], extra_env: Mapping[str, str] | None = None, cwd: Path = PROJECT_ROOT) -> str:
        """Run a command against this server to its end; its output, or `PrefectProcessError` with it."""
        completed = subprocess.run(
            list(args),
            env=self.environment(extra_env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            start_new_session=True,
        )
        output = completed.stdout + completed.stderr
        if completed.returncode != 0:
            raise PrefectProcessError(f"{' '.join(args)} exited {completed.returncode}:\n{output[-LOG_TAIL_CHARS:]}")
        return output

    def cli(self, *args: str, extra_env: Mapping[str, str] | None = None) -> str:
        """`prefect <args>` from the repository root (where prefect.yaml is); its output."""
        return self.run([*PREFECT_COMMAND, *args], extra_env)

    def start_worker(self, pool: str) -> BackgroundProcess:
        """`prefect worker start --pool <pool>` in the background, polling every `WORKER_QUERY_SECONDS`."""
        return self._start(
            f"worker-{pool}",
            [*PREFECT_COMMAND, "worker", "start", "--pool", pool],
            self.environment({"PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_SECONDS)}),
        )

    def client(self) -> SyncPrefectClient:
        """A Prefect client of this server (a context manager)."""
        return SyncPrefectClient(self.api_url)

    def wait_for_final_state(self, flow_run_id: UUID, timeout_s: float) -> FlowRun:
        """The flow run once its state is final; `PrefectProcessError` when a process died or time ran out."""
        with self.client() as client:

            def final_run() -> FlowRun | None:
                flow_run = client.read_flow_run(flow_run_id)
                return flow_run if flow_run.state is not None and flow_run.state.is_final() else None

            return self.wait_for(final_run, timeout_s, f"flow run {flow_run_id} to reach a final state")

    def wait_for(self, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Poll `probe` until it returns something other than None, while every process runs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stopped = [process.name for process in self._processes if not process.running]
            if stopped:
                raise PrefectProcessError(f"{', '.join(stopped)} stopped while waiting for {what}")
            found = probe()
            if found is not None:
                return found
            time.sleep(POLL_INTERVAL_S)
        raise PrefectProcessError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def logs(self) -> str:
        """The tail of the server's and each worker's log."""
        return "\n".join(
            f"===== {process.name} ({process.log_path}) =====\n{process.log_tail()}" for process in self._processes
        )

    @contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Print `logs()` (pytest shows it with the failure) when the block raises."""
        try:
            yield
        except BaseException:
            print(self.logs())
            raise

    def stop(self) -> None:
        """Stop the workers, then the server, each process group whole; then let go of the port."""
        for process in reversed(self._processes):
            process.stop()
        self._port.close()


def flow_run_id_in(output: str) -> UUID:
    """The flow run id that `prefect deployment run` printed."""
    match = FLOW_RUN_ID_PATTERN.search(output)
    if match is None:
        raise PrefectProcessError(f"no flow run id in the output of `prefect deployment run`:\n{output}")
    return UUID(match.group(1))
