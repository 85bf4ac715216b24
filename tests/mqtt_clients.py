#!/usr/bin/env python3
"""paho-mqtt clients for tests/mqtt.rs: each scenario prints one JSON line and exits 0,
or prints what went wrong and exits 1. Every wait is bounded."""
import hashlib
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
WAIT = 10.0


def client(cid, proto, **kw):
    p = mqtt.MQTTv5 if proto == "5" else mqtt.MQTTv311
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=p, **kw)


class Inbox:
    """Collects messages; wait(n) blocks until n arrived or the time is up."""

    def __init__(self):
        self.msgs = []
        self.cv = threading.Condition()

    def on_message(self, _c, _u, m):
        with self.cv:
            self.msgs.append((m.topic, m.qos, m.retain, bytes(m.payload)))
            self.cv.notify_all()

    def wait(self, n, timeout=WAIT):
        end = time.time() + timeout
        with self.cv:
            while len(self.msgs) < n and time.time() < end:
                self.cv.wait(end - time.time())
            return list(self.msgs)


def connect(c, port, **kw):
    done = threading.Event()
    result = {}

    def on_connect(_c, _u, flags, rc, props):
        result["rc"] = rc.value if hasattr(rc, "value") else int(rc)
        done.set()

    c.on_connect = on_connect
    c.connect(HOST, port, keepalive=30, **kw)
    c.loop_start()
    if not done.wait(WAIT):
        fail("no CONNACK")
    return result["rc"]


def subscribe(c, topic, qos, proto):
    done = threading.Event()
    out = {}

    def on_subscribe(_c, _u, mid, rcs, props):
        out["rcs"] = [r.value if hasattr(r, "value") else int(r) for r in rcs]
        done.set()

    c.on_subscribe = on_subscribe
    c.subscribe(topic, qos)
    if not done.wait(WAIT):
        fail("no SUBACK")
    return out["rcs"]


def fail(why):
    print(why)
    sys.stdout.flush()
    os._exit(1)


def roundtrip(port, proto):
    """QoS 0/1/2, a payload of nearly 1 MiB (the default max_packet_size counts the whole
    PUBLISH), a retained message and a will, through the proxy."""
    tag = "v" + proto
    inbox = Inbox()
    sub = client("sub-" + tag, proto)
    sub.on_message = inbox.on_message
    if connect(sub, port) != 0:
        fail("subscriber refused")
    subscribe(sub, f"rt/{tag}/#", 2, proto)
    pub = client("pub-" + tag, proto)
    if connect(pub, port) != 0:
        fail("publisher refused")
    for q in (0, 1, 2):
        pub.publish(f"rt/{tag}/q{q}", f"qos{q}".encode(), qos=q).wait_for_publish(WAIT)
    big = os.urandom((1 << 20) - 1024)
    pub.publish(f"rt/{tag}/big", big, qos=1).wait_for_publish(WAIT)
    got = inbox.wait(4)
    if len(got) < 4:
        fail(f"only {len(got)} of 4 messages: {[g[0] for g in got]}")
    by_topic = {t: (q, p) for t, q, _r, p in got}
    for q in (0, 1, 2):
        if by_topic.get(f"rt/{tag}/q{q}") != (q, f"qos{q}".encode()):
            fail(f"qos {q} message wrong: {by_topic.get(f'rt/{tag}/q{q}')}")
    if hashlib.sha256(by_topic[f"rt/{tag}/big"][1]).digest() != hashlib.sha256(big).digest():
        fail("the big payload changed on the way")

    # Retained: published first, seen by a subscriber that comes later.
    pub.publish(f"ret/{tag}", b"kept", qos=1, retain=True).wait_for_publish(WAIT)
    late_inbox = Inbox()
    late = client("late-" + tag, proto)
    late.on_message = late_inbox.on_message
    connect(late, port)
    subscribe(late, f"ret/{tag}", 1, proto)
    r = late_inbox.wait(1)
    if not r or r[0][3] != b"kept" or not r[0][2]:
        fail(f"retained message not delivered: {r}")
    pub.publish(f"ret/{tag}", b"", qos=1, retain=True).wait_for_publish(WAIT)

    # Will: a client that vanishes without DISCONNECT.
    w = client("will-" + tag, proto)
    w.will_set(f"rt/{tag}/will", b"gone", qos=1)
    connect(w, port)
    time.sleep(0.2)
    w.loop_stop()
    w.socket().close()
    got = inbox.wait(5)
    if not any(t == f"rt/{tag}/will" and p == b"gone" for t, _q, _r, p in got):
        fail(f"will not delivered: {[g[0] for g in got]}")
    for c in (sub, pub, late):
        c.disconnect()
        c.loop_stop()
    print(json.dumps({"ok": True, "messages": len(got)}))


def whoami(port, cid):
    """Which broker a client id lands on: each broker holds a retained `whoami`."""
    inbox = Inbox()
    c = client(cid, "311")
    c.on_message = inbox.on_message
    connect(c, port)
    subscribe(c, "whoami", 0, "311")
    r = inbox.wait(1)
    c.disconnect()
    c.loop_stop()
    if not r:
        fail("no whoami")
    print(json.dumps({"broker": r[0][3].decode()}))


def connect_rc(port, proto, user, password):
    c = client("auth-" + proto, proto)
    if user:
        c.username_pw_set(user, password)
    rc = connect(c, port)
    c.loop_stop()
    print(json.dumps({"rc": rc}))


def acl(port, proto, user):
    """Subscribe to an allowed and a denied filter, publish to an allowed and a denied
    topic at QoS 1; reports SUBACK codes, PUBACK codes (MQTT 5), what arrived and how the
    connection ended."""
    inbox = Inbox()
    c = client("acl-" + proto, proto)
    c.username_pw_set(user, "pw")
    c.on_message = inbox.on_message
    ended = {}
    gone = threading.Event()

    def on_disconnect(_c, _u, flags, rc, props):
        ended["rc"] = rc.value if hasattr(rc, "value") else int(rc)
        gone.set()

    c.on_disconnect = on_disconnect
    acks = {}

    def on_publish(_c, _u, mid, rc, props):
        acks[mid] = rc.value if hasattr(rc, "value") else int(rc)

    c.on_publish = on_publish
    connect(c, port)
    rcs = subscribe(c, "open/#", 1, proto) + subscribe(c, "secret/#", 1, proto)
    c.publish("open/a", b"fine", qos=1).wait_for_publish(WAIT)
    got = inbox.wait(1)
    info = c.publish("secret/a", b"nope", qos=1)
    gone.wait(2.0)
    time.sleep(0.3)
    out = {
        "suback": rcs,
        "received": [t for t, *_ in inbox.msgs],
        "denied_puback": acks.get(info.mid),
        "disconnect": ended.get("rc"),
    }
    if got and not gone.is_set():
        c.disconnect()
    c.loop_stop()
    print(json.dumps(out))


def still_works(port):
    """One publish and its delivery, to show the proxy still serves."""
    inbox = Inbox()
    c = client("alive", "5")
    c.on_message = inbox.on_message
    connect(c, port)
    subscribe(c, "alive/x", 1, "5")
    c.publish("alive/x", b"yes", qos=1).wait_for_publish(WAIT)
    r = inbox.wait(1)
    c.disconnect()
    c.loop_stop()
    if not r:
        fail("no delivery")
    print(json.dumps({"ok": True}))


def payload_for(total, topic, qos, proto):
    """The payload length that makes a PUBLISH exactly `total` bytes, whole."""
    head = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if proto == "5" else 0)
    for n in (1, 2, 3, 4):
        rem = total - 1 - n
        if rem < 128 ** (n - 1) or rem >= 128 ** n:
            continue
        return rem - head
    fail(f"no payload length gives {total} bytes")


def packet_limit(port, broker_port, proto, limit):
    """Through the proxy, a PUBLISH of exactly `limit` bytes whole and then one of a byte
    more, watched by a subscriber on the broker itself. Reports what the subscriber got
    (topic and payload length, up to a marker published afterwards), how the publisher was
    disconnected, and the Maximum Packet Size of its CONNACK (MQTT 5)."""
    tag = "v" + proto
    inbox = Inbox()
    sub = client("lim-sub-" + tag, "5")
    sub.on_message = inbox.on_message
    connect(sub, broker_port)
    subscribe(sub, f"lim/{tag}/#", 1, "5")

    pub = client("lim-pub-" + tag, proto)
    ended = {}
    gone = threading.Event()

    def on_disconnect(_c, _u, flags, rc, props):
        ended["rc"] = rc.value if hasattr(rc, "value") else int(rc)
        gone.set()

    pub.on_disconnect = on_disconnect
    connack = {}

    def on_connect(_c, _u, flags, rc, props):
        connack["max"] = getattr(props, "MaximumPacketSize", None) if props else None
        connack["rc"] = rc.value if hasattr(rc, "value") else int(rc)
        done.set()

    done = threading.Event()
    pub.on_connect = on_connect
    pub.connect(HOST, port, keepalive=30)
    pub.loop_start()
    if not done.wait(WAIT) or connack["rc"] != 0:
        fail(f"publisher not connected: {connack}")

    ok_topic, big_topic = f"lim/{tag}/ok", f"lim/{tag}/big"
    n = payload_for(limit, ok_topic, 1, proto)
    pub.publish(ok_topic, b"o" * n, qos=1).wait_for_publish(WAIT)
    if len(inbox.wait(1)) < 1:
        fail("the PUBLISH at the limit did not arrive")
    n = payload_for(limit + 1, big_topic, 1, proto)
    pub.publish(big_topic, b"b" * n, qos=1)
    if not gone.wait(WAIT):
        fail("the publisher was not disconnected")
    pub.loop_stop()

    # A marker through the proxy after the refusal: once it is in, the big one would be too.
    marker = client("lim-marker-" + tag, proto)
    connect(marker, port)
    marker.publish(f"lim/{tag}/marker", b"m", qos=1).wait_for_publish(WAIT)
    got = inbox.wait(2)
    marker.disconnect()
    marker.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    print(json.dumps({
        "received": [[t.split("/")[-1], len(p)] for t, _q, _r, p in got],
        "disconnect": ended.get("rc"),
        "connack_max": connack.get("max"),
    }))


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    args = sys.argv[3:]
    if cmd == "roundtrip":
        roundtrip(port, args[0])
    elif cmd == "whoami":
        whoami(port, args[0])
    elif cmd == "connect":
        connect_rc(port, args[0], args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None)
    elif cmd == "acl":
        acl(port, args[0], args[1])
    elif cmd == "alive":
        still_works(port)
    elif cmd == "packet_limit":
        packet_limit(port, int(args[0]), args[1], int(args[2]))
    else:
        fail("unknown scenario " + cmd)
    os._exit(0)


if __name__ == "__main__":
    main()
