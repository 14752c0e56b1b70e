"""A raw HTTP/2 gRPC client for hostile-client tests: one that stops reading its answers, or
stops sending its request halfway. Built on the ``h2`` protocol library (no I/O of its own),
driven here over a plain blocking socket, so the test decides exactly what is sent and read."""

from __future__ import annotations

import socket
import struct
import time
from typing import Optional

import h2.config
import h2.connection
import h2.events
import h2.settings


def grpc_frame(msg: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", 1 if compressed else 0, len(msg)) + msg


class H2Raw:
    """One HTTP/2 connection to ``addr`` speaking just enough gRPC."""

    def __init__(self, addr: str, stream_window: Optional[int] = None, timeout: float = 10.0):
        host, port = addr.rsplit(":", 1)
        self.authority = addr
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if stream_window is not None:
            # 0: the server may send no DATA on any stream until told otherwise (never, here).
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
        self.flush()
        self.events: list = []
        self.read_until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in self.events))

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def read_once(self) -> bool:
        data = self.sock.recv(1 << 16)
        if not data:
            return False
        self.events += self.conn.receive_data(data)
        self.flush()
        return True

    def read_until(self, pred, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out; events so far: {self.events[-5:]}"
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            assert self.read_once(), "connection closed"

    def start(self, method: str, metadata: tuple = ()) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", self.authority),
                   (":path", f"/milvus.proto.milvus.MilvusService/{method}"), ("content-type", "application/grpc"),
                   ("te", "trailers"), *metadata]
        self.conn.send_headers(sid, headers)
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        """Sends ``data`` on ``sid``, waiting for flow-control window as needed."""
        while data:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.read_once()
                continue
            chunk, data = data[:room], data[room:]
            self.conn.send_data(sid, chunk, end_stream=end and not data)
            self.flush()

    def call(self, method: str, msg: bytes, metadata: tuple = ()) -> int:
        sid = self.start(method, metadata)
        self.send(sid, grpc_frame(msg), end=True)
        return sid

    def answer(self, sid: int, timeout: float = 10.0) -> tuple[dict, bytes, dict]:
        """Reads until ``sid`` ends: (headers, body bytes, trailers), granting window as data arrives."""
        done = lambda: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid  # noqa: E731
                           or isinstance(e, h2.events.StreamReset) and e.stream_id == sid for e in self.events)
        while not done():
            self.read_until(lambda: True, timeout)  # consume what is there
            for e in self.events:
                if isinstance(e, h2.events.DataReceived) and e.stream_id == sid and e.flow_controlled_length:
                    self.conn.acknowledge_received_data(e.flow_controlled_length, sid)
                    e.flow_controlled_length = 0
            self.flush()
            if not done():
                self.sock.settimeout(timeout)
                assert self.read_once(), "connection closed"
        headers, body, trailers = {}, b"", {}
        for e in self.events:
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                headers = dict(e.headers)
            elif isinstance(e, h2.events.DataReceived):
                body += e.data
            elif isinstance(e, h2.events.TrailersReceived):
                trailers.update(dict(e.headers))
            elif isinstance(e, h2.events.StreamReset):
                # After a complete answer the server may reset the stream (NO_ERROR) to stop
                # the client's unfinished request body: kept beside the trailers.
                trailers["reset"] = str(e.error_code)
        return headers, body, trailers

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def unframe(body: bytes) -> bytes:
    flag, n = struct.unpack(">BI", body[:5])
    assert flag == 0 and len(body) >= 5 + n, (flag, n, len(body))
    return body[5:5 + n]
