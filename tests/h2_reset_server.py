"""A minimal h2c server (python-h2) for the tests: it resets streams and sends interim
responses.

Serves HTTP/2 with prior knowledge on 127.0.0.1:PORT, one thread per connection. A request
for /reset is answered with RST_STREAM(INTERNAL_ERROR) at once; /reset-late gets a
response head and some data, then RST_STREAM(INTERNAL_ERROR); /hints gets a 103 Early
Hints with a Link field at once, then its answer; any other request gets 200 with its path
as the body, after 0.2 s so that several overlap on one connection.

Usage: h2_reset_server.py PORT
"""

import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events


def serve(sock: socket.socket) -> None:
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    lock = threading.Lock()

    def answer(stream_id: int, path: str) -> None:
        time.sleep(0.2)
        with lock:
            conn.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(path)))])
            conn.send_data(stream_id, path.encode(), end_stream=True)
            sock.sendall(conn.data_to_send())

    while True:
        data = sock.recv(65536)
        if not data:
            return
        with lock:
            events = conn.receive_data(data)
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    path = dict(ev.headers)[b":path"].decode()
                    if path == "/reset":
                        conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    elif path == "/reset-late":
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                        conn.send_data(ev.stream_id, b"partial")
                        conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    else:
                        if path == "/hints":
                            conn.send_headers(
                                ev.stream_id,
                                [(":status", "103"), ("link", "</a.css>; rel=preload")],
                            )
                        threading.Thread(target=answer, args=(ev.stream_id, path), daemon=True).start()
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            sock.sendall(conn.data_to_send())


def main() -> None:
    port = int(sys.argv[1])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    while True:
        sock, _ = srv.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
