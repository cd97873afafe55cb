from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.echo import EchoServer
from tests.harness import Gateway

# (here, before any test module imports it: its asserts then say what failed)
pytest.register_assert_rewrite("tests.redis_harness")

REPO = Path(__file__).resolve().parent.parent


def _real_specs() -> Path:
    """../shared/real-specs beside the checkout (CI may clone elsewhere: then the workplace copy)."""
    candidates = [
        os.environ.get("CONTROLPLANE_REAL_SPECS", ""),
        REPO.parent / "shared" / "real-specs",
        "/work/shared/real-specs",
    ]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return REPO.parent / "shared" / "real-specs"


REAL_SPECS = _real_specs()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", help="rewrite golden files and remove orphans")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests never read or write the user's validation cache.
    os.environ["CONTROLPLANE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory, echo: EchoServer) -> Iterator[Callable[..., Gateway]]:
    """Start gateways from file texts; {{PORT}} is the listener port, {{BACKEND}} the echo backend."""
    started: list[Gateway] = []

    def make(files: dict[str, str] | dict[str, str | bytes]) -> Gateway:
        workdir = tmp_path_factory.mktemp("gw")
        texts: dict[str, str | bytes] = {
            k: v.replace("{{BACKEND}}", f"127.0.0.1:{echo.port}") if isinstance(v, str) else v for k, v in files.items()
        }
        gw = Gateway(workdir, texts).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
