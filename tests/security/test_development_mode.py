"""Development mode hands out the key and opens the codec: it must be asked for, and never serve a proxy.

The issue's case: a stack left in the default mode behind a reverse proxy on the same machine that keeps
the default `Host` and adds no forwarding header; every visitor then looks like loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from api import create_app
from api.deps import FORWARDING_HEADERS
from dialogue.platform.settings import Settings
from tests.conftest import TEST_API_KEY, TEST_PAYLOAD_KEYS, free_port, serve


def stack_settings(folder: Path, **changes: object) -> Settings:
    """An API on loopback that never reaches Temporal: the pages and the codec need neither."""
    return Settings(
        _env_file=None,
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'dialogue.platform.db'}",
        temporal_address=f"127.0.0.1:{free_port()}",
        api_key=TEST_API_KEY,
        payload_keys=TEST_PAYLOAD_KEYS.spec(),
        **changes,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def anonymous(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API over real HTTP on 127.0.0.1, and a client that sends no key (as a proxy passes a visitor on)."""
    server, task, base_url = await serve(create_app(settings))
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


def test_the_default_is_production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DIALOGUE_ENVIRONMENT", raising=False)
    settings = Settings(_env_file=None, data_dir=tmp_path)
    assert settings.environment == "production"
    # Nothing is made up where the deployment did not say: no key, no key file.
    with pytest.raises(ValueError, match="DIALOGUE_API_KEY must be set"):
        settings.resolve_api_key()
    assert not (tmp_path / "api_key").exists()


async def test_a_stack_in_the_default_mode_gives_a_visitor_through_a_local_proxy_no_key(
    tmp_path: Path,
) -> None:
    async with anonymous(stack_settings(tmp_path)) as http:
        config = await http.get("/config.json")  # from loopback, under the loopback name: a plain proxy
        assert config.status_code == 200 and config.json()["development_key"] is None
        decoded = await http.post("/codec/decode", json={"payloads": []})
        assert decoded.status_code == 401


@pytest.mark.parametrize("header", FORWARDING_HEADERS)
async def test_development_mode_behind_a_proxy_gives_no_key(tmp_path: Path, header: str) -> None:
    value = "for=203.0.113.7" if header == "forwarded" else "203.0.113.7"
    async with anonymous(stack_settings(tmp_path, environment="development")) as http:
        # The control: asked directly on this machine, development hands the key out (as it should).
        assert (await http.get("/config.json")).json()["development_key"] == TEST_API_KEY
        proxied = {header: value}
        assert (await http.get("/config.json", headers=proxied)).json()["development_key"] is None
        decoded = await http.post("/codec/decode", json={"payloads": []}, headers=proxied)
        assert decoded.status_code == 401
