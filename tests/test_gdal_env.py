"""The GDAL environment: one rasterio session per set of AWS credentials in the environment."""

import pytest

from tasks.storage.gdal_env import environment_session, gdal_env


def test_the_environment_session_is_built_once_per_set_of_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    first = environment_session()
    assert first is not None and environment_session() is first
    assert first.credentials["aws_access_key_id"] == "first-key"
    with gdal_env() as env:
        assert env.session is first

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "rotated-key")
    rotated = environment_session()
    assert rotated is not first and rotated.credentials["aws_access_key_id"] == "rotated-key"


def test_credentials_given_to_the_environment_make_their_own_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "process-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "process-secret")
    with gdal_env(aws_access_key_id="block-key", aws_secret_access_key="block-secret") as env:
        assert env.session.credentials["aws_access_key_id"] == "block-key"


def test_without_credentials_in_the_environment_there_is_no_shared_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert environment_session() is None
