"""A real local HTTP server standing in for the BigCommerce v2 Orders API, for enrichment tests.

Serves `GET /stores/{hash}/v2/orders/{id}`, `…/shipments/{id}` and `…/products` from dicts, checks
`X-Auth-Token`, records every request, and can be scripted to fail (status codes, dropped
connections, slow or held answers) for the next requests.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROUTE = re.compile(r"^/stores/([^/]+)/v2/orders/(\d+)(?:/(shipments)/(\d+)|/(products))?$")


@dataclass
class Scripted:
    """What to do instead of answering normally: a status code, a dropped connection, a delay,
    or no answer until the test sets `hold` (at most 30 s)."""

    status: int | None = None
    drop: bool = False
    delay: float = 0.0
    hold: threading.Event | None = None


@dataclass
class SeenRequest:
    path: str
    token: str | None


class FakeBigCommerce:
    """Use as a context manager; `url` is the api_url to put in the source's credentials."""

    def __init__(self, store_hash: str = "abc123", token: str = "test-access-token") -> None:
        self.store_hash = store_hash
        self.token = token
        self.orders: dict[str, dict[str, Any]] = {}
        self.shipments: dict[tuple[str, str], dict[str, Any]] = {}
        self.products: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[SeenRequest] = []
        self._script: list[Scripted] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *steps: Scripted) -> None:
        with self._lock:
            self._script.extend(steps)

    def add_order(
        self,
        order_id: int,
        shipment_id: int,
        *,
        phone: str | None = "+447911123456",
        tracking_number: str = "RM123456785GB",
        carrier: str = "royal-mail",
        tracking_link: str = "https://track.example.com/RM123456785GB",
    ) -> None:
        """An order with one shipment, in the v2 API's field names (our own values)."""
        address = {
            "first_name": "Alex",
            "last_name": "Example",
            "street_1": "1 Example Street",
            "city": "London",
            "zip": "SW1A 1AA",
            "country": "United Kingdom",
            "country_iso2": "GB",
            "phone": phone or "",
            "email": "alex@example.com",
        }
        self.orders[str(order_id)] = {
            "id": order_id,
            "status": "Shipped",
            "status_id": 2,
            "customer_locale": "en",
            "billing_address": {**address, "phone": "+447911000000"},
        }
        self.shipments[(str(order_id), str(shipment_id))] = {
            "id": shipment_id,
            "order_id": order_id,
            "tracking_number": tracking_number,
            "shipping_method": "Standard",
            "shipping_provider": "",
            "tracking_carrier": carrier,
            "tracking_link": tracking_link,
            "generated_tracking_link": "",
            "billing_address": {**address, "phone": "+447911000000"},
            "shipping_address": address,
            "items": [{"order_product_id": 501, "product_id": 77, "quantity": 2}],
        }
        self.products[str(order_id)] = [
            {
                "id": 501,
                "order_id": order_id,
                "product_id": 77,
                "name": "Linen shirt",
                "quantity": 2,
            }
        ]

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    # --- serving ---------------------------------------------------------------------------

    def __enter__(self) -> FakeBigCommerce:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(SeenRequest(request.path, request.headers.get("X-Auth-Token")))
            step = self._script.pop(0) if self._script else None
        if step is not None:
            if step.hold is not None:
                step.hold.wait(30)
            if step.delay:
                time.sleep(step.delay)
            if step.drop:
                # Close without any answer: the client sees a dropped connection.
                request.close_connection = True
                request.connection.shutdown(2)
                return
            if step.status is not None:
                self._json(request, step.status, [{"status": step.status, "message": "scripted"}])
                return
        if request.headers.get("X-Auth-Token") != self.token:
            self._json(request, 401, [{"status": 401, "message": "Unauthorized"}])
            return
        match = ROUTE.match(request.path)
        body: Any = None
        if match and match.group(1) == self.store_hash:
            order_id = match.group(2)
            if match.group(3):
                body = self.shipments.get((order_id, match.group(4)))
            elif match.group(5):
                body = self.products.get(order_id)
            else:
                body = self.orders.get(order_id)
        if body is None:
            self._json(
                request, 404, [{"status": 404, "message": "The requested resource was not found."}]
            )
            return
        self._json(request, 200, body)

    @staticmethod
    def _json(request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer


@contextmanager
def fake_bigcommerce(**kwargs: Any) -> Iterator[FakeBigCommerce]:
    with FakeBigCommerce(**kwargs) as fake:
        yield fake
