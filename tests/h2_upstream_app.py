"""ASGI app for tests/http2_upstream.rs, served by hypercorn over h2c and h2 (TLS).

Paths: /echo streams the request body back; /headers lists the request fields; /slow
answers after 0.3 s (/inflight says how many /slow requests are waiting); /trailers answers with a trailer field (when asked with te: trailers);
/stats tells how many distinct client ports (upstream connections) the app has seen,
/reset-stats forgets them; anything else answers with its path. Every response says
the client port, the HTTP version and the scheme it came with (x-peer-port,
x-http-version, x-scheme).
"""
import asyncio
import json

PEERS = set()
SLOW_IN_FLIGHT = 0


async def read_body(receive):
    chunks = []
    while True:
        m = await receive()
        chunks.append(m.get("body", b""))
        if not m.get("more_body"):
            return b"".join(chunks)


async def app(scope, receive, send):
    global SLOW_IN_FLIGHT
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    client = scope.get("client") or ("?", 0)
    if path not in ("/stats", "/inflight"):
        PEERS.add(client[1])
    hdrs = [
        (b"x-peer-port", str(client[1]).encode()),
        (b"x-http-version", scope["http_version"].encode()),
        (b"x-scheme", scope["scheme"].encode()),
    ]
    if path == "/stats":
        body = json.dumps({"peers": len(PEERS)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})
    elif path == "/reset-stats":
        PEERS.clear()
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/echo":
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        while True:
            m = await receive()
            b = m.get("body", b"")
            more = m.get("more_body", False)
            if b or not more:
                await send({"type": "http.response.body", "body": b, "more_body": more})
            if not more:
                break
    elif path == "/headers":
        text = "".join(f"{k.decode()}: {v.decode()}\n" for k, v in scope["headers"])
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": text.encode()})
    elif path == "/inflight":
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": str(SLOW_IN_FLIGHT).encode()})
    elif path == "/slow":
        SLOW_IN_FLIGHT += 1
        try:
            await asyncio.sleep(0.3)
        finally:
            SLOW_IN_FLIGHT -= 1
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": b"slow"})
    elif path == "/trailers":
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": hdrs, "trailers": True})
        await send({"type": "http.response.body", "body": b"with trailers"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc123")]})
    else:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send({"type": "http.response.body", "body": path.encode()})


if __name__ == "__main__":
    # One process (hypercorn's own runner forks a worker): `h2_upstream_app.py PORT [CERT KEY]`.
    # SIGTERM shuts down gracefully (GOAWAY to HTTP/2 clients).
    import os
    import signal
    import sys

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{sys.argv[1]}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    # H2_APP_MAX_REQUESTS=N: retire each connection after N requests (hypercorn's default
    # is 1000), with GOAWAY.
    config.keep_alive_max_requests = int(os.environ.get("H2_APP_MAX_REQUESTS", "1000"))
    if len(sys.argv) > 3:
        config.certfile, config.keyfile = sys.argv[2], sys.argv[3]

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)

    asyncio.run(main())
