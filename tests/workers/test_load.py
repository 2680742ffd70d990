"""50 concurrent clients for 60 s against the API as deployed (issue 4, hostile clients).

The live service (tests/support/live.py): gunicorn through ``api.gunicorn_conf`` (2
processes x 8 threads), one real worker process (``CXR_TF_THREADS=1``), Redis database
7; loopback only. One asyncio client (aiohttp) runs 50 clients at once:

* 44 ping clients: ``GET /ping``, then 0.2-0.6 s of think time, until the window ends
  (clients arrive at random within the first second);
* 4 status clients: ``GET /jobs/<id>`` of a job seen so far (404 before the first);
* 1 bulk client: a bulk job of 3 small phantoms (``wait: false``), polled until done,
  then the next: one job in flight at a time;
* 1 single client: single inferences one after another (alternately saved to disk and
  returned in base64).

So the worker is busy through the window but never hopelessly behind (one job and one
single at a time), and both kinds are capped in count. Asserted: no 5xx and no
connection error at all; every job and single inference finished correctly; ``/ping``'s
p99, measured client-side on the pings sent while a job or single inference was in
flight, under 100 ms (the one timing bound the issue asks for). ``CXR_LOAD_TEST_S``
shortens the window when iterating (default 60). The numbers are printed on one line
(``pytest -s``) and reported in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from engine.jobstore import JobStore
from tests.support.live import LiveService

DURATION_S = float(os.environ.get("CXR_LOAD_TEST_S", "60"))
CLIENTS = 50
PING_CLIENTS, STATUS_CLIENTS = 44, 4  # + 1 bulk client + 1 single client = 50
THINK_S = (0.2, 0.6)
#: Clients arrive over the first second, not in one instant: 48 TCP connections opened in
#: the same millisecond made the first pings wait 70-90 ms in a trial, the only slow
#: pings of the run; that burst says nothing about /ping while jobs run.
ARRIVAL_S = 1.0
#: Bounds, not targets: far above what 60 s allows (the pipeline does about 1 job and 2
#: singles a second here), so jobs keep running through the whole window.
MAX_BULK_JOBS, MAX_SINGLES = 500, 1000
JOB_FINISH_TIMEOUT_S = 120.0
PING_P99_BOUND_S = 0.100


@dataclass
class Sample:
    kind: str
    start: float
    latency: float
    status: int


@dataclass
class Load:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)  # a job or single in flight
    job_ids: list[str] = field(default_factory=list)
    jobs_done: list[dict[str, Any]] = field(default_factory=list)
    singles: list[dict[str, Any]] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def run_load(live: LiveService, duration_s: float) -> Load:
    load = Load()
    auth = {"Authorization": live.token}
    rng = random.Random(4711)
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=JOB_FINISH_TIMEOUT_S)
    async with aiohttp.ClientSession(live.url, connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + duration_s

        async def call(kind: str, method: str, path: str, body: Any = None, headers: Any = None) -> Any:
            start = time.perf_counter()
            status, data = 0, None
            try:
                async with session.request(method, path, json=body, headers=headers) as resp:
                    status, raw = resp.status, await resp.read()
                data = json.loads(raw)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                load.errors.append(f"{kind} {method} {path}: {exc!r}")
            load.samples.append(Sample(kind, start, time.perf_counter() - start, status))
            return status, data

        async def pinger() -> None:
            await asyncio.sleep(rng.uniform(0, ARRIVAL_S))
            while time.perf_counter() < deadline:
                await call("ping", "GET", "/ping")
                await asyncio.sleep(rng.uniform(*THINK_S))

        async def status_reader() -> None:
            await asyncio.sleep(rng.uniform(0, ARRIVAL_S))
            while time.perf_counter() < deadline:
                job_id = rng.choice(load.job_ids) if load.job_ids else "0000000000000000"
                await call("jobs", "GET", f"/jobs/{job_id}", headers=auth)
                await asyncio.sleep(rng.uniform(*THINK_S))

        async def bulk_client() -> None:
            while time.perf_counter() < deadline and len(load.job_ids) < MAX_BULK_JOBS:
                start = time.perf_counter()
                out = live.data / "out-load" / f"bulk-{len(load.job_ids)}"
                status, data = await call(
                    "bulk",
                    "POST",
                    "/bulk_inference",
                    headers=auth,
                    body={"input_folder_path": str(live.inputs), "output_folder_path": str(out), "wait": False},
                )
                if status != 202:
                    load.errors.append(f"bulk: {status} {data}")
                    return
                job_id = data["Data"]["job_id"]
                load.job_ids.append(job_id)
                while time.perf_counter() < start + JOB_FINISH_TIMEOUT_S:
                    await asyncio.sleep(0.25)
                    status, data = await call("jobs", "GET", f"/jobs/{job_id}", headers=auth)
                    if status == 200 and data["Data"]["status"] in ("completed", "failed"):
                        load.jobs_done.append(data["Data"])
                        break
                else:
                    load.errors.append(f"bulk job {job_id} not finished after {JOB_FINISH_TIMEOUT_S} s")
                    return
                load.busy.append((start, time.perf_counter()))

        async def single_client() -> None:
            image = str(min(live.inputs.glob("*.dcm")))
            while time.perf_counter() < deadline and len(load.singles) < MAX_SINGLES:
                start = time.perf_counter()
                body: dict[str, Any] = {"input_image_path": image, "save_to_disk": False}
                if len(load.singles) % 2:
                    body = {"input_image_path": image, "output_folder_path": str(live.data / "out-load" / "single")}
                status, data = await call("single", "POST", "/single_inference", headers=auth, body=body)
                load.singles.append({"status": status, "message": data and data.get("Message")})
                load.busy.append((start, time.perf_counter()))

        tasks = (
            [pinger() for _ in range(PING_CLIENTS)]
            + [status_reader() for _ in range(STATUS_CLIENTS)]
            + [bulk_client(), single_client()]
        )
        assert len(tasks) == CLIENTS
        await asyncio.gather(*tasks)
    return load


def in_busy(sample: Sample, busy: list[tuple[float, float]]) -> bool:
    return any(start <= sample.start <= end for start, end in busy)


@pytest.mark.timeout(int(DURATION_S) + 300)
def test_fifty_clients_for_a_minute_no_5xx_and_ping_stays_fast(live: LiveService) -> None:
    started = time.perf_counter()
    load = asyncio.run(run_load(live, DURATION_S))
    wall = time.perf_counter() - started

    by_kind = Counter(s.kind for s in load.samples)
    statuses = Counter(f"{s.kind} {s.status}" for s in load.samples)
    pings = [s for s in load.samples if s.kind == "ping"]
    busy_pings = [s.latency for s in pings if in_busy(s, load.busy)]
    report = {
        "window_s": DURATION_S,
        "wall_s": round(wall, 1),
        "clients": CLIENTS,
        "requests": dict(by_kind),
        "statuses": dict(sorted(statuses.items())),
        "bulk_jobs": len(load.jobs_done),
        "singles": len(load.singles),
        "pings_during_jobs": len(busy_pings),
        **{
            f"{kind}_ms": {
                f"p{q}": round(1000 * percentile([s.latency for s in load.samples if s.kind == kind], q / 100), 1)
                for q in (50, 95, 99)
            }
            for kind in sorted(by_kind)
        },
        "ping_during_jobs_ms": {f"p{q}": round(1000 * percentile(busy_pings, q / 100), 1) for q in (50, 95, 99)},
        "ping_max_ms": round(1000 * max(s.latency for s in pings), 1),
    }
    print("load test:", json.dumps(report))

    assert not load.errors, load.errors[:20]
    assert not [s for s in load.samples if s.status >= 500], report["statuses"]
    assert by_kind["bulk"] >= 2 and by_kind["single"] >= 2, report  # jobs really ran during the window
    assert all(job["status"] == "completed" and job["processed"] == 3 for job in load.jobs_done), load.jobs_done
    assert len(load.jobs_done) == by_kind["bulk"]
    assert all(single["status"] == 200 for single in load.singles), load.singles
    # Jobs ran for most of the window, so the bound below is measured while they ran.
    assert len(busy_pings) >= 0.8 * len(pings), report
    assert percentile(busy_pings, 0.99) < PING_P99_BOUND_S, report


# -- starving the API (issue 15, item 6) ----------------------------------------------------

SLOW_CLIENTS, WAITING_BULKS = 50, 20
STARVE_WINDOW_S = 8.0  # pings measured while every slow client is still connected (cut at 10 s)
PING_BOUND_S = 1.0


async def slow_client(url: str, index: int, result: dict[str, Any]) -> None:
    """Sends a request line, then one header line a second, never the end of the headers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.perf_counter()
    writer.write(b"GET /ping HTTP/1.1\r\n")

    async def trickle() -> None:
        for i in range(60):
            writer.write(b"X-Slow-%d: %d\r\n" % (index, i))
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=40)
    except (ConnectionError, asyncio.TimeoutError) as exc:
        answer = repr(exc).encode()
    result[f"slow{index}"] = (time.perf_counter() - started, answer[:40])
    sender.cancel()
    writer.close()


async def starve(live: LiveService) -> dict[str, Any]:
    result: dict[str, Any] = {"pings": [], "bulk": []}
    auth = {"Authorization": live.token}
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(live.url, connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def bulk(i: int) -> None:
            body = {"input_folder_path": str(live.inputs), "output_folder_path": str(live.data / "out-starve" / str(i))}
            async with session.post("/bulk_inference", json=body, headers=auth) as resp:
                result["bulk"].append((resp.status, resp.headers.get("Retry-After"), await resp.json()))

        slow = [asyncio.create_task(slow_client(live.url, i, result)) for i in range(SLOW_CLIENTS)]
        bulks = [asyncio.create_task(bulk(i)) for i in range(WAITING_BULKS)]
        await asyncio.sleep(1.5)  # every slow client and bulk request connected and sent
        window_end = time.perf_counter() + STARVE_WINDOW_S
        while time.perf_counter() < window_end:
            started = time.perf_counter()
            try:
                async with (
                    aiohttp.ClientSession(live.url, timeout=aiohttp.ClientTimeout(total=5)) as fresh,
                    fresh.get("/ping") as resp,
                ):
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            result["pings"].append((time.perf_counter() - started, status))
            await asyncio.sleep(0.2)
        result["waiting_at_end"] = sum(1 for task in bulks if not task.done())
        await asyncio.gather(*slow)
        # Free the threads still waiting: their jobs are failed, the wait ends at once.
        store = JobStore.from_url(live.redis_url)
        for job_id in store.active_jobs():
            store.fail(job_id, "load test over")
        await asyncio.gather(*bulks, return_exceptions=True)
    return result


@pytest.mark.timeout(300)
def test_ping_stays_fast_with_50_slow_clients_and_20_waiting_bulk_requests(live: LiveService) -> None:
    """Issue 15, item 6: on main, 40 clients sending a header line a second made /ping time
    out (gunicorn's gthread threads each held by one), and so did 17 ``wait: true`` bulk
    requests. Now gunicorn's event loop reads requests before any thread gets them
    (``api.gunicorn_worker``, 408 after CXR_HEADER_TIMEOUT_S = 10 s) and at most
    CXR_MAX_BULK_WAITS (4) bulk requests per API process wait, the next answered 503 with
    Retry-After."""
    result = asyncio.run(starve(live))
    pings = result["pings"]
    slow = [v for k, v in result.items() if k.startswith("slow")]
    refused = [b for b in result["bulk"] if b[0] == 503]
    report = {
        "pings": len(pings),
        "ping_max_ms": round(1000 * max(p[0] for p in pings), 1),
        "ping_p50_ms": round(1000 * percentile([p[0] for p in pings], 0.5), 1),
        "slow_cut_after_s": [round(min(s[0] for s in slow), 1), round(max(s[0] for s in slow), 1)],
        "bulk_refused_503": len(refused),
        "bulk_waiting_at_window_end": result["waiting_at_end"],
    }
    print("starvation test:", json.dumps(report))
    assert len(pings) >= 20 and all(status == 200 for _, status in pings), pings
    assert max(latency for latency, _ in pings) < PING_BOUND_S, report
    assert len(slow) == SLOW_CLIENTS
    assert all(answer.startswith(b"HTTP/1.1 408") and 9.0 < after < 15.0 for after, answer in slow), slow[:5]
    # 2 gunicorn processes x 4 waiting slots: the other requests were refused, never queued.
    assert len(refused) >= WAITING_BULKS - 8 and result["waiting_at_end"] <= 8, report
    assert all(retry == "10" and body["Data"] == {"retry_after_s": 10} for _, retry, body in refused), refused[:3]
