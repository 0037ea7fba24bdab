"""Dotdigital v2 SMS client: `POST /v2/sms-messages/send-to/{number}`, and error classification.

`classify_response` and `classify_exception` are pure, so every rule is unit-testable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from importlib import metadata

import certifi
import urllib3
from requests.utils import get_environ_proxies
from urllib3.exceptions import ConnectTimeoutError, HTTPError, ReadTimeoutError

from dispatch_notifier.phones import digits, mask
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
    """Sends SMS through one pool of kept-alive connections; thread-safe for concurrent sends.

    It speaks urllib3, the connection pool under requests, directly: requests' layer (session
    settings, hooks, cookie jars, its Response object) cost a third of the client's CPU per send,
    and every send is the same POST to one host.
    """

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
        self._timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        self.headers = {
            **urllib3.make_headers(basic_auth=f"{user}:{password}", user_agent=_user_agent()),
            "Accept": "application/json",
        }
        self._send_headers = {**self.headers, "Content-Type": "application/json"}
        self.http = _pool_manager(self.api_url, pool_size)

    def send(self, e164: str, message: str) -> SendOutcome:
        body = json.dumps({"message": message}, allow_nan=False).encode()
        number = digits(e164)
        try:
            response = self._request(
                "POST", f"/v2/sms-messages/send-to/{number}", body=body, headers=self._send_headers
            )
        except HTTPError as exc:
            outcome = classify_exception(exc)
            # The detail is shown in the send log and the API, where numbers are masked.
            detail = (outcome.detail or "").replace(number, mask(e164))
            return dataclasses.replace(outcome, detail=detail or None)
        return classify_response(response.status, response.headers, response.data)

    def account_info(self) -> dict[str, object]:
        """The account's properties (credits, region endpoint), for a credentials check."""
        response = self._request("GET", "/v2/account-info", headers=self.headers)
        if response.status != 200:
            raise RuntimeError(f"Dotdigital account-info answered HTTP {response.status}")
        data = json.loads(response.data)
        return {p["name"]: p.get("value") for p in data.get("properties", [])}

    def _request(self, method: str, path: str, **kwargs: object) -> urllib3.BaseHTTPResponse:
        # No retries at this level: a retried POST could text a customer twice. No redirects:
        # the API never answers with one, and following it would resend the body elsewhere.
        return self.http.urlopen(
            method,
            f"{self.api_url}{path}",
            retries=False,
            redirect=False,
            timeout=self._timeout,
            **kwargs,  # type: ignore[arg-type]
        )


def _pool_manager(api_url: str, pool_size: int) -> urllib3.PoolManager:
    """Connections to the API host, through the proxy the environment names for it, if any.

    Proxy and CA bundle settings are read here, once, as requests reads them (`HTTPS_PROXY`,
    `NO_PROXY`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`; certifi's bundle otherwise): every
    request goes to the one API host, so they cannot change between sends.
    """
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    options: dict[str, object] = {
        "num_pools": 1,
        "maxsize": pool_size,
        "ca_certs": ca_bundle or certifi.where(),
    }
    scheme = urllib3.util.parse_url(api_url).scheme or "https"
    proxies = get_environ_proxies(api_url)  # honours NO_PROXY
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return urllib3.PoolManager(**options)  # type: ignore[arg-type]
    auth = urllib3.util.parse_url(proxy).auth
    if auth:
        options["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=auth)
    return urllib3.ProxyManager(proxy, **options)  # type: ignore[arg-type]


def _user_agent() -> str:
    try:
        return f"dispatch-notifier/{metadata.version('dispatch-notifier')}"
    except metadata.PackageNotFoundError:
        return "dispatch-notifier"


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


def classify_exception(exc: Exception) -> SendOutcome:
    """Only failures before the request was sent are safe to retry."""
    name = type(exc).__name__
    if _never_connected(exc):
        return SendOutcome(
            "retrying", "could not connect to Dotdigital", name, detail=str(exc)[:300]
        )
    if isinstance(exc, ReadTimeoutError):
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


def _never_connected(exc: BaseException) -> bool:
    """True when no connection was made (refused, DNS, connect timeout, proxy unreachable),
    here or in what the error wraps: nothing reached Dotdigital."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectTimeoutError):  # NewConnectionError is one too
            return True
        wrapped = [a for a in current.args if isinstance(a, BaseException)]
        current = current.__cause__ or current.__context__ or (wrapped[0] if wrapped else None)
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
