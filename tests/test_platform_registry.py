"""The platform registry: every built-in platform is known, however the modules were imported."""

from __future__ import annotations

import subprocess
import sys

BUILT_IN = ["bigcommerce", "shopify", "shopware", "standard", "woocommerce"]


def test_every_built_in_platform_is_registered() -> None:
    from dispatch_notifier import platforms

    assert platforms.names() == BUILT_IN


def test_importing_one_platform_module_first_does_not_hide_the_others() -> None:
    # A fresh interpreter: in this one the registry is long loaded. Importing bigcommerce first
    # once left only it (and `standard`, which it imports) registered, so `shopify` webhooks
    # were answered 404.
    code = (
        "import dispatch_notifier.platforms.bigcommerce\n"
        "from dispatch_notifier import platforms\n"
        "print(','.join(platforms.names()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip().split(",") == BUILT_IN
