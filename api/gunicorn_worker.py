"""gunicorn's ``gthread`` worker, except that a thread gets a connection only once its
whole request has arrived (``api.gunicorn_conf`` selects it).

Why: plain ``gthread`` hands every connection to a thread of the pool, which then reads
the request line, the headers and the body with blocking reads and no deadline. 40
clients sending one header line a second held all 16 threads of the API (2 processes x
8) and ``/ping`` timed out (issue 15, item 6).

Here the worker's event loop (the thread that accepts connections) reads each request
itself, without blocking, up to the end of its headers and of a body framed by
``Content-Length`` (at most ``CXR_MAX_BODY_BYTES``) or by chunked encoding; only the
complete request goes to a thread, with the bytes already read put back in front of
gunicorn's parser. A request must arrive within ``CXR_HEADER_TIMEOUT_S`` (10 s) from
the moment its first byte could be read (a new connection, or a kept-alive one that
became readable); a client that is slower gets 408 and the connection is closed. A slow
client therefore costs one socket and a buffer, never a thread.

* ``Expect: 100-continue``: the event loop answers ``100 Continue`` itself (and drops the
  header), so the body is buffered like any other.
* A ``Content-Length`` over the body limit, or framing gunicorn must refuse anyway (two
  lengths, an unknown transfer coding), goes to a thread after the headers: the app
  answers 413, gunicorn 400, without waiting for a body.
* Every process buffers at most ``BUFFER_BUDGET_BYTES`` at once over all its
  connections; a request that would pass it gets 503 and the connection is closed, so
  many slow uploads cannot take the memory instead of the threads.
* Threads still write responses with blocking sends: a send that makes no progress for
  ``SEND_TIMEOUT_S`` (a client that stopped reading) fails and closes the connection
  (``SO_SNDTIMEO``), as does a read (``SO_RCVTIMEO``) in the rare cases above.

This stands in for a buffering reverse proxy and is no substitute for one in front of a
deployment reachable by untrusted clients (docs/deployment.md): a proxy also terminates
TLS and limits connections per address. TLS and HTTP/2 prior knowledge, which need the
socket before any byte is read, turn the buffering off (the worker is then plain
``gthread``). It relies on ``gthread``'s internals (``enqueue_req``, ``TConn``), hence
the version bounds on gunicorn in pyproject.toml; tests/api/test_gunicorn_worker.py
runs it for real.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import struct
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Bytes buffered at once by one worker process, over all its connections.
BUFFER_BUDGET_BYTES = 64 << 20
SEND_TIMEOUT_S = 30.0
#: After the event loop's own answer (408, 413, 503): how long the connection stays open,
#: its input drained, so that closing it does not reset it before the answer is read.
LINGER_S = 2.0
RECV_BYTES = 64 << 10
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def header_timeout_s(environ: Any = None) -> float:
    """``CXR_HEADER_TIMEOUT_S``: seconds a client has to send a whole request."""
    raw = (os.environ if environ is None else environ).get("CXR_HEADER_TIMEOUT_S", "").strip()
    value = float(raw) if raw else DEFAULT_HEADER_TIMEOUT_S
    if not value > 0:
        raise ValueError(f"CXR_HEADER_TIMEOUT_S must be a positive number of seconds, not {raw!r}")
    return value


def max_body_bytes(environ: Any = None) -> int:
    raw = (os.environ if environ is None else environ).get("CXR_MAX_BODY_BYTES", "").strip()
    return int(raw) if raw else DEFAULT_MAX_BODY_BYTES


def envelope_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer in the API's envelope, for the event loop to send."""
    body = json.dumps({"Result": "Failure", "Data": None, "Message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Framing:
    """How a request's body ends, read from its head."""

    NONE, LENGTH, CHUNKED, HANDOFF = "none", "length", "chunked", "handoff"

    def __init__(self, head: bytes, body_limit: int) -> None:
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        self.expect_continue = False
        self.expect_line: bytes | None = None
        for line in head.split(b"\n")[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                lengths.add(value)
            elif name == b"transfer-encoding":
                codings.append(value.lower())
            elif name == b"expect" and value.lower() == b"100-continue":
                self.expect_continue = True
                self.expect_line = line + b"\n"
        self.length = 0
        if codings:
            chunked_only = codings == [b"chunked"] and not lengths
            self.kind = self.CHUNKED if chunked_only else self.HANDOFF
        elif not lengths:
            self.kind = self.NONE
        elif len(lengths) == 1 and (value := next(iter(lengths))).isdigit() and int(value) <= body_limit:
            self.kind, self.length = self.LENGTH, int(value)
        else:
            self.kind = self.HANDOFF  # over the limit, or no single valid length: answered without a body


def chunked_end(buf: bytes | bytearray, start: int) -> tuple[int | None, int]:
    """Where a chunked body starting at ``start`` ends (after its trailers): ``(end,
    _)``; ``(None, resume)`` while incomplete, where ``resume`` is the first chunk not yet
    whole (scan again from there, so a body arriving byte by byte costs linear time);
    ``(-1, _)`` when malformed (gunicorn's parser then answers 400)."""
    pos = start
    while True:
        resume = pos
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, resume
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return -1, resume
        pos = eol + 2
        if size == 0:
            while True:  # trailers, then an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None, resume
                if eol == pos:
                    return eol + 2, resume
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None, resume
        pos += size + 2


class BufferingThreadWorker(ThreadWorker):
    """``gthread``, with requests read by the event loop first (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s()
        self.body_limit = max_body_bytes()
        cfg = self.cfg
        self.head_limit = cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4
        self.buffering = not cfg.is_ssl and getattr(cfg, "http2_cleartext", "off") not in ("prior-knowledge", "both")
        self.reading: OrderedDict[Any, float] = OrderedDict()  # connection -> deadline, oldest first
        self.lingering: OrderedDict[Any, float] = OrderedDict()  # answered, closing: connection -> deadline
        self.buffered_bytes = 0

    # -- the one way into a thread --------------------------------------------------------

    def enqueue_req(self, conn: Any) -> None:
        """Every path to a thread (new, kept-alive, read-ahead) comes here, on the event loop."""
        if not self.buffering or getattr(conn, "cxr_request", None) is not None:
            super().enqueue_req(conn)
            return
        initial = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        conn.cxr_buf = bytearray(initial)
        conn.cxr_need = None  # total bytes of the request, once the head says
        conn.cxr_framing = None
        conn.cxr_scanned = 0
        conn.cxr_registered = False
        self.buffered_bytes += len(initial)
        self.reading[conn] = time.monotonic() + self.header_timeout_s
        if not self._advance(conn):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            conn.cxr_registered = True

    def handle(self, conn: Any) -> Any:
        """In the thread: put the request read by the event loop in front of the parser."""
        request = getattr(conn, "cxr_request", None)
        if request is not None:
            conn.cxr_request = None
            conn.data_ready = True  # gthread must not wait for readable data again
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(request)
        return super().handle(conn)

    # -- the event loop's reading ---------------------------------------------------------

    def _on_readable(self, conn: Any, _sock: Any) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:  # the client closed before a whole request came (or after our answer)
            self._drop(conn)
            return
        if conn in self.lingering:
            return  # what the client still sends after our answer is dropped
        if self.buffered_bytes + len(data) > BUFFER_BUDGET_BYTES:
            self._answer(conn, 503, "Service Unavailable", "Too many requests are being received; try again later")
            return
        conn.cxr_buf += data
        self.buffered_bytes += len(data)
        self._advance(conn)

    def _advance(self, conn: Any) -> bool:
        """Dispatch the connection if its request is complete (or must be handed over
        early); True when it left the event loop."""
        buf = conn.cxr_buf
        if conn.cxr_framing is None:
            match = _HEAD_END.search(buf, max(0, conn.cxr_scanned - 3))  # only what is new
            conn.cxr_scanned = len(buf)
            if match is None:
                if len(buf) > self.head_limit:
                    return self._dispatch(conn)  # gunicorn's parser refuses the head
                return False
            head_end = match.end()
            framing = Framing(bytes(buf[:head_end]), self.body_limit)
            if framing.kind == Framing.HANDOFF:
                return self._dispatch(conn)
            if framing.expect_continue and framing.expect_line is not None:
                if not self._send_continue(conn):
                    return True
                line = framing.expect_line
                cut = bytes(buf[:head_end]).find(line)
                del buf[cut : cut + len(line)]
                self.buffered_bytes -= len(line)
                head_end -= len(line)
            conn.cxr_framing, conn.cxr_head_end, conn.cxr_scanned = framing, head_end, head_end
            if framing.kind == Framing.NONE:
                conn.cxr_need = head_end
            elif framing.kind == Framing.LENGTH:
                conn.cxr_need = head_end + framing.length
        framing = conn.cxr_framing
        if framing.kind == Framing.CHUNKED:
            end, conn.cxr_scanned = chunked_end(buf, conn.cxr_scanned)
            if end is None:
                if len(buf) > conn.cxr_head_end + 4 * self.body_limit + RECV_BYTES:
                    self._answer(conn, 413, "Content Too Large", "Request body too large")
                    return True
                return False
            if end > 0 and end - conn.cxr_head_end > 4 * self.body_limit:
                self._answer(conn, 413, "Content Too Large", "Request body too large")
                return True
            return self._dispatch(conn)
        if len(buf) >= conn.cxr_need:
            return self._dispatch(conn)
        return False

    def _dispatch(self, conn: Any) -> bool:
        self._leave_loop(conn)
        self.buffered_bytes -= len(conn.cxr_buf)
        conn.cxr_request, conn.cxr_buf = bytes(conn.cxr_buf), bytearray()
        for option in (socket.SO_SNDTIMEO, socket.SO_RCVTIMEO):
            conn.sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", int(SEND_TIMEOUT_S), 0))
        super().enqueue_req(conn)
        return True

    def _send_continue(self, conn: Any) -> bool:
        try:
            conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        except OSError:
            self._drop(conn)
            return False
        return True

    def _answer(self, conn: Any, status: int, reason: str, message: str) -> None:
        """A short final answer from the event loop (no thread involved), then a half-close;
        the input is drained for up to ``LINGER_S`` before the close (RFC 9112, 9.6)."""
        try:
            conn.sock.send(envelope_response(status, reason, message))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)  # the client is gone or not reading: closing is all that is left
            return
        self.reading.pop(conn, None)
        self.buffered_bytes -= len(conn.cxr_buf)
        conn.cxr_buf = bytearray()
        self.lingering[conn] = time.monotonic() + LINGER_S
        if not conn.cxr_registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            conn.cxr_registered = True

    def _drop(self, conn: Any) -> None:
        self._leave_loop(conn)
        self.buffered_bytes -= len(conn.cxr_buf)
        conn.cxr_buf = bytearray()
        self.nr_conns -= 1
        conn.close()

    def _leave_loop(self, conn: Any) -> None:
        self.reading.pop(conn, None)
        self.lingering.pop(conn, None)
        if conn.cxr_registered:
            conn.cxr_registered = False
            self.poller.unregister(conn.sock)

    def murder_pending(self) -> None:
        """Called by gthread's loop about once a second: also close slow requests (408)."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading:
            conn, deadline = next(iter(self.reading.items()))
            if deadline > now:
                break
            if conn.cxr_buf:
                message = f"Request not received within {self.header_timeout_s:g} s"
                self._answer(conn, 408, "Request Timeout", message)
            else:
                self._drop(conn)
        while self.lingering:
            conn, deadline = next(iter(self.lingering.items()))
            if deadline > now:
                break
            self._drop(conn)
