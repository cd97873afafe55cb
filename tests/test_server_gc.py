"""The server's garbage collection happens when it is quiet, not during a push."""

from __future__ import annotations

import asyncio
import gc
import time

from controlplane.server import ControlPlane, ServeOptions
from tests.conftest import REPO


def test_the_server_collects_and_freezes_when_quiet_and_thaws_on_stop() -> None:
    async def go() -> None:
        gc.unfreeze()  # whatever an earlier test froze
        plane = ControlPlane(
            ServeOptions(
                [REPO / "specs"],
                xds_address="127.0.0.1:0",
                admin_address="127.0.0.1:0",
                in_process=True,
                background_validation=False,
            )
        )
        await plane.start()
        try:
            deadline = time.monotonic() + 15
            while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert gc.get_freeze_count() > 0  # quiet for a second: collected, survivors frozen
        finally:
            await plane.stop()
        assert gc.get_freeze_count() == 0

    asyncio.run(go())
