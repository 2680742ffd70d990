"""``api.gunicorn_worker``: slow clients cost a socket, never a thread (issue 15, item 6).

gunicorn is started as ``make run`` starts it (``-c python:api.gunicorn_conf
'api:create_app()'``) with ONE process of ONE thread and ``CXR_HEADER_TIMEOUT_S=2``, on
real Redis (no Celery worker: every request here is answered by the API alone). With
plain ``gthread`` (main) a single client trickling its headers holds that thread and
``/ping`` waits until the client is done; here ``/ping`` is answered at once and the slow
client gets 408 after the timeout. The framing cases check that reading requests in the
event loop changes nothing for well-behaved clients: pipelined requests, bodies in
pieces, chunked bodies, ``Expect: 100-continue``, kept-alive connections.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api import serve_command
from api.gunicorn_worker import Framing, chunked_end, header_timeout_s
from tests.support.service import ROOT, SECRET, redis_db_url

pytestmark = pytest.mark.service

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from cxr.stack import Child, free_port, stop_group
    from tests.support.live import wait_http

    tmp = tmp_path_factory.mktemp("gunicorn-worker")
    port = free_port()
    env = dict(
        os.environ,
        REDIS_URL=redis_db_url("gunicorn_worker"),
        CXR_JWT_SECRET=SECRET,
        CXR_DATA_ROOTS=str(tmp),
        CXR_HOST="127.0.0.1",
        CXR_PORT=str(port),
        CXR_API_WORKERS="1",
        CXR_API_THREADS="1",
        CXR_HEADER_TIMEOUT_S=str(TIMEOUT_S),
        PYTHONPATH=str(ROOT),
    )
    log = tmp / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_command(),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log)
        yield ("127.0.0.1", port)
    finally:
        stop_group(Child("api", proc, log))
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def ping(server: tuple[str, int]) -> float:
    started = time.monotonic()
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - started


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def trickle(sock: socket.socket, parts: list[bytes], every_s: float) -> threading.Thread:
    def run() -> None:
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:
                return  # cut off by the server: what the test expects
            time.sleep(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "first, rest",
    [
        (b"GET /ping HTTP/1.1\r\n", [b"X-Slow: %d\r\n" % i for i in range(40)]),  # headers, a line at a time
        (
            b"POST /bulk_inference HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n",
            [b" " * 10] * 40,  # a body, 10 bytes at a time
        ),
        (b"", []),  # connects and sends nothing
    ],
    ids=["slow-headers", "slow-body", "silent"],
)
def test_a_slow_client_holds_no_thread_and_is_cut_off(server: tuple[str, int], first: bytes, rest: list[bytes]) -> None:
    slow = socket.create_connection(server)
    started = time.monotonic()
    slow.sendall(first)
    trickle(slow, rest, 0.2)
    time.sleep(0.3)
    latencies = [ping(server) for _ in range(3)]  # the only thread is free
    answer = read_all(slow)
    cut_after = time.monotonic() - started
    slow.close()
    assert max(latencies) < 1.0, latencies
    assert TIMEOUT_S - 0.5 < cut_after < TIMEOUT_S + 2.5, cut_after
    if first:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body == {"Result": "Failure", "Data": None, "Message": "Request not received within 2 s"}
    else:
        assert answer == b""


def test_pipelined_requests_and_bodies_in_pieces(server: tuple[str, int]) -> None:
    body = json.dumps({"input_folder_path": "/x"}).encode()
    post = (
        b"POST /bulk_inference HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n" + post[:30])
        time.sleep(0.2)
        sock.sendall(post[30:-5])
        time.sleep(0.2)
        sock.sendall(post[-5:] + b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    assert statuses(answer) == [200, 401, 200], answer[:600]  # no token: the body was read, 401 from the app


def test_chunked_body_and_expect_continue(server: tuple[str, int]) -> None:
    body = b"[1, 2"  # not an object: the app answers 415 once it has the body... after auth (401 first)
    with socket.create_connection(server) as sock:
        sock.sendall(
            b"POST /bulk_inference HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(b"%x\r\n%s\r\n" % (2, body[:2]))
        time.sleep(0.2)
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (3, body[2:]))
        assert statuses(read_all(sock)) == [401]
    with socket.create_connection(server) as sock:
        sock.sendall(
            b"POST /bulk_inference HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
            b"Connection: close\r\n\r\n"
        )
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client may now send its body
        sock.sendall(body)
        answer = read_all(sock)
    assert statuses(answer) == [401], answer[:300]


def test_a_body_over_the_limit_is_answered_without_reading_it(server: tuple[str, int]) -> None:
    from api import create_app
    from api.auth import issue_token

    token = issue_token(create_app({"REDIS_URL": redis_db_url("gunicorn_worker"), "CXR_JWT_SECRET": SECRET}), "t")
    with socket.create_connection(server) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /bulk_inference HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\nConnection: close\r\n"
            b"Authorization: %s\r\n\r\n{" % token.encode()
        )
        answer = read_all(sock)
    assert statuses(answer) == [413], answer[:300]
    assert time.monotonic() - started < TIMEOUT_S


def test_a_kept_alive_connection_gets_the_same_deadline(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(1000)
        assert first.startswith(b"HTTP/1.1 200"), first
        while b'{"status":"ok"}' not in first:
            first += sock.recv(1000)
        sock.sendall(b"GET /ping HTTP/1.1\r\n")  # the second request never ends
        assert ping(server) < 1.0
        assert statuses(read_all(sock)) == [408]


# -- the pure parts ---------------------------------------------------------------------------


def test_framing_of_request_heads() -> None:
    limit = 1000
    assert Framing(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", limit).kind == Framing.NONE
    length = Framing(b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n", limit)
    assert (length.kind, length.length) == (Framing.LENGTH, 12)
    assert Framing(b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", limit).kind == Framing.HANDOFF
    assert Framing(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", limit).kind == Framing.HANDOFF
    assert Framing(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", limit).kind == Framing.HANDOFF
    assert Framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", limit).kind == Framing.CHUNKED
    smuggle = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    assert Framing(smuggle, limit).kind == Framing.HANDOFF  # gunicorn refuses it: 400
    assert Framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", limit).kind == Framing.HANDOFF
    expect = Framing(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n", limit)
    assert expect.expect_continue and expect.expect_line == b"Expect: 100-Continue\r\n"


def test_end_of_chunked_bodies() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    assert chunked_end(body, 0)[0] == len(body) - 4
    resume = 0
    for cut in range(len(body) - 4):  # byte by byte, resuming where the last scan stopped
        end, resume = chunked_end(body[:cut], resume)
        assert end is None and resume <= cut
    assert chunked_end(body, resume)[0] == len(body) - 4
    assert chunked_end(b"zz\r\n", 0)[0] == -1


def test_header_timeout_setting() -> None:
    assert header_timeout_s({}) == 10.0
    assert header_timeout_s({"CXR_HEADER_TIMEOUT_S": "2.5"}) == 2.5
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ValueError):
            header_timeout_s({"CXR_HEADER_TIMEOUT_S": bad})


def test_the_worker_class_is_the_one_gunicorn_runs() -> None:
    import api.gunicorn_conf as conf

    assert conf.worker_class == "api.gunicorn_worker.BufferingThreadWorker"
    assert Path(ROOT / "api" / "gunicorn_worker.py").is_file()


def test_unfinished_uploads_cannot_take_the_memory_instead(server: tuple[str, int]) -> None:
    """80 clients each send 1,000,000 of the 1,048,576 body bytes they announce, and stop:
    past 64 MiB buffered in the process, the next get 503 at once instead of a buffer."""
    head = b"POST /bulk_inference HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n"
    socks = []
    try:
        for _ in range(80):
            sock = socket.create_connection(server)
            sock.sendall(head + b" " * 1_000_000)
            socks.append(sock)
        assert ping(server) < 1.0
        answers = [read_all(sock, timeout=TIMEOUT_S + 3) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    assert len(refused) >= 80 - 67, [a[:40] for a in answers][:5]  # 64 MiB holds 67 of them at most
    assert b"Too many requests are being received; try again later" in refused[0]
    assert all(a.startswith((b"HTTP/1.1 503 ", b"HTTP/1.1 408 ")) for a in answers)
