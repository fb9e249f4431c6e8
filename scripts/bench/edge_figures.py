#!/usr/bin/env python3
"""Figures of the public edge (issue 13), against one running release node.

Usage: edge_figures.py BASE_URL ADMIN_URL DB_FILE NODE_PID ADMIN_LOGIN ADMIN_PASSWORD [--limits-off]

Prints one JSON object: login guesses and sign-ups per second from one address, idle
connections held while probes are answered, metric series before and after a flood of made-up
methods and paths, and the node's memory under 5,000 order-stream attempts.
"""

import asyncio
import http.client
import json
import random
import sqlite3
import string
import sys
import time
import urllib.parse

BASE, ADMIN_BASE, DB_FILE, PID, ADMIN_LOGIN, ADMIN_PASSWORD = sys.argv[1:7]
LIMITS_OFF = "--limits-off" in sys.argv
HOST, PORT = urllib.parse.urlsplit(BASE).hostname, urllib.parse.urlsplit(BASE).port
ADMIN_HOST, ADMIN_PORT = urllib.parse.urlsplit(ADMIN_BASE).hostname, urllib.parse.urlsplit(ADMIN_BASE).port


def connection(source="127.0.0.1", host=HOST, port=PORT):
    return http.client.HTTPConnection(host, port, timeout=30, source_address=(source, 0))


def call(conn, method, path, body=None, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else None)


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def rate(path, make_body, seconds, source):
    """Requests sent one after another on one keep-alive connection for `seconds`."""
    conn = connection(source)
    counts = {}
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        status, _ = call(conn, "POST", path, make_body(n))
        counts[status] = counts.get(status, 0) + 1
        n += 1
    elapsed = time.monotonic() - start
    return {"seconds": round(elapsed, 1), "statuses": counts}


def login_guesses(victim):
    return rate("/api/v1/auth/login", lambda n: {"loginId": victim, "password": f"guess-{n:06d}"}, 10, "127.0.0.60")


def sign_ups():
    tag = "".join(random.choices(string.ascii_lowercase, k=6))
    return rate(
        "/api/v1/users",
        lambda n: {"loginId": f"farm{tag}{n}", "password": f"farm-{tag}-pw-{n}", "name": "Farm"},
        10,
        "127.0.0.61",
    )


async def hold_idle(sources, per_source):
    """Opens `per_source` idle sockets from each source address; returns the kept ones."""
    kept, refused = [], 0
    for source in sources:
        for _ in range(per_source):
            reader, writer = await asyncio.open_connection(HOST, PORT, local_addr=(source, 0))
            kept.append((reader, writer))
    await asyncio.sleep(1.0)
    alive = []
    for reader, writer in kept:
        try:
            data = await asyncio.wait_for(reader.read(64), 0.005)
            if data:
                refused += 1
                writer.close()
            else:
                alive.append((reader, writer))
        except asyncio.TimeoutError:
            alive.append((reader, writer))
    return alive, refused


def probes(n):
    conn = connection("127.0.0.1")
    times, ok = [], 0
    for _ in range(n):
        t = time.monotonic()
        status, _ = call(conn, "GET", "/health/live")
        times.append((time.monotonic() - t) * 1000)
        ok += status == 200
    times.sort()
    return {"answered": ok, "of": n, "p50_ms": round(times[len(times) // 2], 2), "max_ms": round(times[-1], 2)}


async def idle_connections():
    # 20 addresses x 250 sockets (under the per-address cap of 256): 5,000 idle sockets.
    sources = [f"127.0.1.{i}" for i in range(1, 21)]
    alive, refused = await hold_idle(sources, 250)
    during = await asyncio.get_running_loop().run_in_executor(None, probes, 200)
    rss = rss_kib()
    # One address alone opening 2,000: the cap keeps 256.
    one_alive, one_refused = await hold_idle(["127.0.2.1"], 2000)
    for _, writer in alive + one_alive:
        writer.close()
    return {
        "idle_sockets_held": len(alive),
        "refused": refused,
        "probes_while_held": during,
        "node_rss_kib": rss[0],
        "one_address_2000": {"held": len(one_alive), "refused": one_refused},
    }


def metric_series(admin_token):
    def series():
        conn = connection(host=ADMIN_HOST, port=ADMIN_PORT)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    def flood():
        for _ in range(1000):
            method = "".join(random.choices(string.ascii_uppercase, k=random.randint(3, 40)))
            path = "/" + "".join(random.choices(string.ascii_lowercase + "/", k=random.randint(1, 60)))
            conn = connection("127.0.0.62")
            try:
                conn.request(method, path)
                conn.getresponse().read()
            except Exception:
                pass
            conn.close()

    # Sample lines (a histogram series is ~14 lines). The first flood may add the few
    # (OTHER, unmatched, status) combinations not seen yet; the second must add nothing.
    before = series()
    flood()
    after_first = series()
    flood()
    return {"before": before, "after_1000_made_up": after_first, "after_2000_made_up": series()}


async def stream_attempts(token, order_id, n):
    """`n` order-stream requests at once by one member, each kept open if served."""
    request = (
        f"GET /api/v1/orders/{order_id}/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
    ).encode()
    statuses, held = {}, []
    sources = [f"127.0.3.{i}" for i in range(1, 41)]

    async def one(i):
        reader, writer = await asyncio.open_connection(HOST, PORT, local_addr=(sources[i % len(sources)], 0))
        writer.write(request)
        await writer.drain()
        line = await reader.readline()
        status = int(line.split()[1]) if line else 0
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            held.append(writer)
        else:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(n)))
    rss = rss_kib()
    for writer in held:
        writer.close()
    return {"attempts": n, "statuses": statuses, "node_rss_kib": rss[0], "node_peak_rss_kib": rss[1]}


def main():
    admin = connection("127.0.0.63")
    _, tokens = call(admin, "POST", "/api/v1/auth/login", {"loginId": ADMIN_LOGIN, "password": ADMIN_PASSWORD})
    admin_token = tokens["accessToken"]
    tag = "".join(random.choices(string.ascii_lowercase, k=6))
    victim = f"victim{tag}"
    status, member = call(connection("127.0.0.64"), "POST", "/api/v1/users",
                          {"loginId": victim, "password": f"victim-{tag}-pw", "name": "Victim"})
    assert status == 201, member
    status, streamer = call(connection("127.0.0.66"), "POST", "/api/v1/users",
                            {"loginId": f"streamer{tag}", "password": f"streamer-{tag}-pw", "name": "Streamer"})
    assert status == 201, streamer
    _, tokens = call(connection("127.0.0.66"), "POST", "/api/v1/auth/login",
                     {"loginId": f"streamer{tag}", "password": f"streamer-{tag}-pw"})
    member_token = tokens["accessToken"]
    figures = {"rate_limits": "off" if LIMITS_OFF else "on (defaults)"}
    figures["login_guesses_one_account_one_address"] = login_guesses(victim)
    figures["sign_ups_one_address"] = sign_ups()
    if not LIMITS_OFF:
        figures["rss_kib_before_stream_attempts"] = rss_kib()[0]
        # An order left PROCESSING (its stream stays open until it changes).
        order_id = 910_000_000 + streamer["userId"]
        now = int(time.time() * 1000)
        with sqlite3.connect(DB_FILE) as db:
            db.execute(
                "INSERT INTO orders (id, user_id, status, total_price, discount, created_at, updated_at) "
                "VALUES (?, ?, 'PROCESSING', 0, 0, ?, ?)",
                (order_id, streamer["userId"], now, now),
            )
        figures["order_streams"] = asyncio.run(stream_attempts(member_token, order_id, 5000))
        figures["idle_connections"] = asyncio.run(idle_connections())
        figures["metric_series"] = metric_series(admin_token)
    print(json.dumps(figures, indent=1))


main()
