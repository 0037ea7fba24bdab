"""Dotdigital v2 SMS client: `POST /v2/sms-messages/send-to/{number}`, and error classification.

`classify_response` and `classify_exception` are pure, so every rule is unit-testable.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from dispatch_notifier.phones import digits
from dispatch_notifier.sms import SendOutcome

TOKEN = re.compile(r"ERROR_[A-Z_]+")

# token -> (status, reason a shop owner understands)
TOKENS: dict[str, tuple[str, str]] = {
    "ERROR_SMS_SENDNOTPERMITTED": ("failed", "no SMS credit: top up the Dotdigital account"),
    "ERROR_SMS_INVALIDPHONENUMBER": ("failed", "Dotdigital rejected the phone number"),
    "ERROR_SMS_INVALID": ("failed", "Dotdigital rejected the message text"),
    "ERROR_INVALID_LOGIN": ("failed", "bad Dotdigital credentials (or the account is disabled)"),
    "ERROR_APIUSER_INVALID": ("failed", "bad Dotdigital credentials: the API user is invalid"),
    "ERROR_ACCOUNT_INVALID": ("failed", "the Dotdigital account is invalid"),
    "ERROR_FEATURENOTACTIVE": ("failed", "SMS is not enabled on the Dotdigital account"),
    "ERROR_SEND_LIMITEXCEEDED": ("failed", "the account's send allowance is used up"),
    "ERROR_PARAMETER_INVALID": ("failed", "Dotdigital rejected the request"),
    "ERROR_MALFORMED_REQUEST": ("failed", "Dotdigital rejected the request"),
    "ERROR_BODY_DOES_NOT_MATCH_CONTENT_TYPE": ("failed", "Dotdigital rejected the request"),
    "ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE": (
        "retrying",
        "Dotdigital is temporarily unavailable",
    ),
    "ERROR_APIUSAGE_EXCEEDED": ("retrying", "Dotdigital's hourly API limit was reached"),
    "ERROR_UNKNOWN": ("unknown", "Dotdigital reported an unknown error"),
}


class DotdigitalClient:
    """Sends SMS through one pooled HTTP session; thread-safe for concurrent sends."""

    name = "dotdigital"

    def __init__(
        self,
        api_url: str,
        user: str,
        password: str,
        *,
        timeout: tuple[float, float] = (3.05, 15.0),
        pool_size: int = 10,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.auth = (user, password)
        self.session.headers.update({"Accept": "application/json"})
        # Proxy and CA bundle settings are read from the environment once, here: with
        # `trust_env` requests re-read and re-parsed every *_proxy variable on each send
        # (a tenth of a send's CPU). Every request goes to the one API host, so the result
        # is the same; only a change to the environment after start-up is no longer seen.
        self.session.trust_env = False
        self.session.proxies.update(requests.utils.get_environ_proxies(self.api_url))
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            self.session.verify = ca_bundle
        # No retries at this level: a retried POST could text a customer twice.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        # Every send is this POST with its own number at the end of the path and its own body.
        # It is prepared once (session headers, Basic auth, JSON content type) and copied per
        # send: requests' preparation of each call (merging the session's settings, parsing the
        # URL, encoding the credentials) cost about a tenth of a send's CPU in the worker.
        self._post = self.session.prepare_request(
            requests.Request("POST", f"{self.api_url}/v2/sms-messages/send-to/", json={})
        )

    def send(self, e164: str, message: str) -> SendOutcome:
        request = self._post.copy()
        request.url = f"{self._post.url}{digits(e164)}"
        request.body = json.dumps({"message": message}, allow_nan=False).encode()
        request.headers["Content-Length"] = str(len(request.body))
        try:
            # Session.send still applies the proxies, CA bundle, hooks and adapter as before.
            response = self.session.send(request, timeout=self.timeout)
        except requests.RequestException as exc:
            return classify_exception(exc)
        return classify_response(response.status_code, response.headers, response.content)

    def account_info(self) -> dict[str, object]:
        """The account's properties (credits, region endpoint), for a credentials check."""
        response = self.session.get(f"{self.api_url}/v2/account-info", timeout=self.timeout)
        response.raise_for_status()
        data = response.json()
        return {p["name"]: p.get("value") for p in data.get("properties", [])}


def classify_response(status: int, headers: dict[str, str] | object, body: bytes) -> SendOutcome:
    """Map an HTTP answer to an outcome: by the ERROR_* token first, then by status."""
    if 200 <= status < 300:
        return SendOutcome("sent", http_status=status)
    snippet = body[:300].decode("utf-8", "replace")
    token = _token(body)
    if status == 429:
        return SendOutcome(
            "retrying",
            "Dotdigital's rate limit was reached",
            token or "HTTP_429",
            status,
            retry_at=_retry_at(headers),
            detail=snippet,
        )
    if token in TOKENS:
        outcome, reason = TOKENS[token]
        retry_at = _retry_at(headers) if outcome == "retrying" else None
        return SendOutcome(outcome, reason, token, status, retry_at=retry_at, detail=snippet)
    if status in (401, 403):
        return SendOutcome(
            "failed",
            "bad Dotdigital credentials, or the API URL is for another region",
            token or f"HTTP_{status}",
            status,
            detail=snippet,
        )
    if status == 503:
        return SendOutcome(
            "retrying",
            "Dotdigital is temporarily unavailable",
            token or "HTTP_503",
            status,
            retry_at=_retry_at(headers),
            detail=snippet,
        )
    if 400 <= status < 500:
        return SendOutcome(
            "failed",
            f"Dotdigital rejected the message (HTTP {status})",
            token or f"HTTP_{status}",
            status,
            detail=snippet,
        )
    # 500, 502, 504, anything else: the message may or may not have gone out.
    return SendOutcome(
        "unknown",
        f"Dotdigital answered HTTP {status}; the SMS may have been sent",
        token or f"HTTP_{status}",
        status,
        detail=snippet,
    )


def classify_exception(exc: requests.RequestException) -> SendOutcome:
    """Only failures before the request was sent are safe to retry."""
    name = type(exc).__name__
    if isinstance(exc, requests.ConnectTimeout) or _refused_before_sending(exc):
        return SendOutcome(
            "retrying", "could not connect to Dotdigital", name, detail=str(exc)[:300]
        )
    if isinstance(exc, requests.ReadTimeout):
        return SendOutcome(
            "unknown",
            "Dotdigital did not answer in time; the SMS may have been sent",
            name,
            detail=str(exc)[:300],
        )
    return SendOutcome(
        "unknown",
        "the connection broke after sending; the SMS may have been sent",
        name,
        detail=str(exc)[:300],
    )


def _refused_before_sending(exc: Exception) -> bool:
    """True when the connection was never made (refused, DNS): nothing reached Dotdigital."""
    if not isinstance(exc, requests.ConnectionError):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError):
            return True
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException) and id(reason) not in seen:
            current = reason
            continue
        current = (
            current.__cause__
            or current.__context__
            or (
                current.args[0]
                if current.args and isinstance(current.args[0], BaseException)
                else None
            )
        )
    return False


def _token(body: bytes) -> str | None:
    try:
        data = json.loads(body)
        message = data.get("message", "") if isinstance(data, dict) else ""
    except (ValueError, UnicodeDecodeError):
        message = body[:500].decode("utf-8", "replace")
    match = TOKEN.search(str(message))
    return match.group(0) if match else None


def _retry_at(headers: object) -> datetime | None:
    """When the provider says to come back: X-RateLimit-Reset (epoch seconds) or Retry-After."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    lowered = {str(k).lower(): v for k, v in dict(headers).items()}  # type: ignore[call-overload]
    reset = lowered.get("x-ratelimit-reset")
    if reset:
        try:
            return datetime.fromtimestamp(float(reset), UTC)
        except (ValueError, OverflowError, OSError):
            pass
    retry_after = lowered.get("retry-after")
    if retry_after:
        try:
            return datetime.now(UTC) + timedelta(seconds=float(retry_after))
        except ValueError:
            try:
                return parsedate_to_datetime(retry_after).astimezone(UTC)
            except (TypeError, ValueError):
                return None
    return None


def monotonic_ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
