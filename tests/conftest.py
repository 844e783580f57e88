"""Shared fixtures. Servers run on 127.0.0.1 only and are started and stopped here."""

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.testing.disk_faults import MountRefused, small_disk
from tasks.testing.fault_proxy import FaultProxy
from tasks.testing.servers import TEST_CREDENTIALS, ReservedPort, S3Server, StacApi
from tests import REPO_ROOT

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED_S2 = Path(os.environ.get("S2_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "s2"))
SERVER_FIXTURES = frozenset(
    {"s3_server", "stac_api_factory", "prefect_harness", "no_prefect_server", "slack_receiver", "small_disk_at"}
)
"""Fixtures that start a server (moto S3, rustac, a Prefect API, the Slack stand-in) or mount a disk:
a test using one, directly or through another fixture, is an integration test."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test from what it uses, so no list of tests is kept by hand: `integration` when it
    uses a `SERVER_FIXTURES` fixture or is marked `slow` (it starts processes itself), `shared_data`
    when it reads the real Sentinel-2 files. `make test-fast` runs the tests that are neither."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)
        if "shared_s2" in fixtures:
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def shared_s2() -> Path:
    """The real Sentinel-2 reference data folder; the test is skipped when it is absent."""
    if not SHARED_S2.is_dir():
        pytest.skip(f"real Sentinel-2 data not found at {SHARED_S2} (set S2_SHARED_DATA to its folder)")
    return SHARED_S2


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the whole session, with the AWS variables pointing at it.

    AWS_ENDPOINT_URL, test credentials and region are set in os.environ while it runs (boto3 and
    `tasks.storage.gdal_env.gdal_env()` read them) and restored afterwards.
    """
    server = S3Server()
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        environment.setenv("AWS_ACCESS_KEY_ID", TEST_CREDENTIALS["aws_access_key_id"])
        environment.setenv("AWS_SECRET_ACCESS_KEY", TEST_CREDENTIALS["aws_secret_access_key"])
        environment.setenv("AWS_DEFAULT_REGION", TEST_CREDENTIALS["region_name"])
        environment.delenv("AWS_PROFILE", raising=False)
        environment.delenv("AWS_SESSION_TOKEN", raising=False)
        yield server
    server.stop()


@pytest.fixture(autouse=True)
def _s3_server_reset_after_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used `s3_server`: clear its injected faults and counters."""
    yield
    if "s3_server" in request.fixturenames:
        server = request.getfixturevalue("s3_server")
        server.clear_faults()
        server.reset_counters()


@pytest.fixture
def no_prefect_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Prefect's ephemeral API, as the CLI and `make demo` use it: no PREFECT_API_URL (another test's
    harness may have set it in the environment and in the settings)."""
    from flows.embedded_api import waiting_long_enough

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}), waiting_long_enough():
        assert not PREFECT_API_URL.value()
        yield


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's S3 server, fresh for each test."""
    proxy = FaultProxy(s3_server.endpoint_url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def unresolvable_host() -> str:
    """A host name under `.invalid` that this machine's resolver says at once does not exist (the
    test is skipped when it does not answer in seconds)."""
    from tasks.testing.fault_scenarios import RESOLVER_WAIT_S, unresolvable_host

    host = unresolvable_host()
    if host is None:
        pytest.skip(f"the resolver did not say within {RESOLVER_WAIT_S:g} s that a .invalid name does not exist")
    return host


@pytest.fixture
def stac_api_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict, list[dict]], str]]:
    """Start `rustac serve` for (collection, items) and return the API root URL; stopped after the test."""
    apis: list[StacApi] = []

    def start(collection: dict[str, Any], items: list[dict[str, Any]]) -> str:
        api = StacApi(collection, items, tmp_path_factory.mktemp("stac_api"))
        apis.append(api)
        return api.url

    yield start
    for api in apis:
        api.stop()


# --- Prefect API and Slack webhook stand-in (blocks: notification and publishing) ---------------

from tests.slack_receiver import SlackReceiver  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throw-away Prefect API (SQLite, ~8 s to start) for the rest of the session."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.embedded_api import STARTUP_TIMEOUT_S

    with prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S):
        yield


@pytest.fixture
def slack_receiver() -> Iterator[SlackReceiver]:
    """A loopback Slack webhook endpoint recording each POSTed payload; answers 200 "ok"."""
    receiver = SlackReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def refused_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT where connections are refused: a port reserved, never listened on, for the test."""
    with ReservedPort() as port:
        yield port.url


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test (STAC validation must not fetch schemas)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def small_disk_at() -> Iterator[Callable[[Path, str], Path]]:
    """Mount a tmpfs of a size ('160k', '3m') over a folder for the test (`tasks.testing.disk_faults.small_disk`);
    the test is skipped, with the reason, where mounting is refused. Unmounted after the test."""
    with ExitStack() as mounts:

        def mount(folder: Path, size: str) -> Path:
            try:
                return mounts.enter_context(small_disk(folder, size))
            except MountRefused as refused:
                pytest.skip(f"a small disk cannot be staged here: {refused}")

        yield mount
