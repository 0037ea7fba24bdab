"""The console backend: prints each SMS instead of sending it, so the flow runs without an account.

The send log records such messages as sent by `console`: no phone received them.
"""

from __future__ import annotations

import sys
import threading

from dispatch_notifier.phones import mask
from dispatch_notifier.sms import SendOutcome

_print_lock = threading.Lock()


class ConsoleBackend:
    name = "console"

    def send(self, e164: str, message: str) -> SendOutcome:
        with _print_lock:
            print(
                f"--- SMS (console backend, not sent to any phone) to {mask(e164)} ---\n"
                f"{message}\n---",
                file=sys.stdout,
                flush=True,
            )
        return SendOutcome("sent", reason="printed by the console backend; no phone received it")
