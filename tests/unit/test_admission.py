"""Read admission (api/admission.py) on a small litestar app with the read API's own hook
(api/app.py:before_read): a read-your-writes read waits without a slot and reads with one,
whatever the concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from litestar import Litestar, Router, get

from api.admission import ReadAdmission, admit
from api.app import before_read
from api.params import MinPosition

# The routes below declare ``min_position`` as the read API does (api/params.py explains the
# style, which keeps its limits in the OpenAPI document; litestar 2.25 calls it deprecated).
pytestmark = pytest.mark.filterwarnings("ignore:.*declared using deprecated inferred style")

SLOTS = 2


class Probe:
    """Counts the requests waiting (for a position) and working (reading) at any moment."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = self.working = self.most_working = 0

    async def work(self) -> dict[str, int]:
        self.working += 1
        self.most_working = max(self.most_working, self.working)
        await asyncio.sleep(0.01)  # a query, the reply's encoding
        self.working -= 1
        return {"working": self.working}


def _app(probe: Probe) -> ReadAdmission:
    @get("/waits")
    async def waits(min_position: MinPosition = None) -> dict[str, int]:
        if min_position is not None:  # as api/read_routes.py:_fresh does
            probe.waiting += 1
            await probe.gate.wait()
            probe.waiting -= 1
            await admit()
        return await probe.work()

    @get("/plain")
    async def plain() -> dict[str, int]:
        return await probe.work()

    @get("/fails")
    async def fails(min_position: MinPosition = None) -> dict[str, int]:
        await admit()
        raise RuntimeError("a read that fails once admitted")

    v1 = Router("/v1", route_handlers=[waits, plain, fails], before_request=before_read)
    return ReadAdmission(Litestar([v1], logging_config=None), slots=SLOTS)


async def _get_all(app: ReadAdmission, paths: list[str]) -> list[int]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # an ASGI app typed with plain dicts
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as client:
        replies = await asyncio.gather(*(client.get(p) for p in paths))
    return [r.status_code for r in replies]


async def _until(condition: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def test_waiting_takes_no_slot_and_reading_after_the_wait_takes_one() -> None:
    probe = Probe()
    app = _app(probe)
    waits = asyncio.ensure_future(_get_all(app, [f"/v1/waits?min_position={i}" for i in range(40)]))
    await _until(lambda: probe.waiting == 40)  # all forty wait at once: no slot needed for that
    assert (app.queued, app.working) == (0, 0)
    assert await _get_all(app, ["/v1/plain"] * 10) == [200] * 10  # plain reads go on meanwhile
    probe.most_working = 0
    probe.gate.set()  # the forty positions are reached at the same moment
    assert await waits == [200] * 40
    assert probe.most_working == SLOTS, "reads after their wait were not admitted a few at a time"
    assert (app.queued, app.working, app.slots._value) == (0, 0, SLOTS)  # every turn given back


async def test_min_position_on_a_route_that_does_not_wait_is_admitted_at_once() -> None:
    probe = Probe()
    app = _app(probe)
    assert await _get_all(app, ["/v1/plain?min_position=7"] * 20) == [200] * 20
    assert probe.most_working == SLOTS
    assert (app.queued, app.working, app.slots._value) == (0, 0, SLOTS)


async def test_a_read_that_fails_gives_its_slot_back() -> None:
    app = _app(Probe())
    assert await _get_all(app, ["/v1/fails?min_position=1"] * 5 + ["/v1/fails"] * 5) == [500] * 10
    assert (app.queued, app.working, app.slots._value) == (0, 0, SLOTS)
