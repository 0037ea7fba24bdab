"""`simulate`'s signed samples: each platform's sample is accepted by our own receiver and sent."""

from __future__ import annotations

import base64

import pytest

from dispatch_notifier.platform_samples import signed_sample
from dispatch_notifier.worker import Worker
from tests.platform_helpers import add_source, notifications

SECRETS = {
    "shopify": "s-shopify",
    "woocommerce": "s-woo",
    "shopware": "s-shopware",
    "standard": "whsec_" + base64.b64encode(b"s" * 32).decode(),
}


@pytest.mark.parametrize("platform", sorted(SECRETS))
def test_each_simulated_dispatch_is_accepted_and_sent(app, platform):
    add_source(app, "sim", platform, [SECRETS[platform]])
    client = app.test_client()
    for _ in range(2):  # fresh ids: each simulation is a new shipment
        body, headers = signed_sample(platform, SECRETS[platform], "+447911123456", "1001")
        response = client.post("/webhooks/sim", data=body, headers=headers)
        assert response.status_code == 200, response.json
        assert response.json["status"] == "accepted"
    Worker(app).run_until_idle()
    rows = notifications(app)
    assert [r.status for r in rows] == ["sent", "sent"]
    assert rows[0].message.startswith("Your order 1001 is on its way")


def test_bigcommerce_cannot_be_simulated_and_says_why():
    with pytest.raises(ValueError, match="only ids"):
        signed_sample("bigcommerce", "secret", "+447911123456")
