"""The rate-limit service's ADS stream to the control plane: where its limits come from
(the stream itself: :mod:`controlplane.xds.subscriber`).

Subscribed to :data:`~.config.RESOURCE_TYPE` by name (the domains served). A response is
ACKed when every resource in it decodes, else NACKed with what is wrong, and the last good
config keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..xds.subscriber import ADS_METHOD, Subscriber, XdsOptions, channel
from .config import RESOURCE_TYPE, Config, decode_resources

__all__ = ["ADS_METHOD", "ConfigSubscriber", "XdsOptions", "channel"]

log = logging.getLogger("controlplane.ratelimit.xds")


class ConfigSubscriber(Subscriber[Config]):
    """The rate-limit service's limits, by domain (the resource names subscribed to).
    Resources a response leaves out are kept (the protocol lets a server send only the named
    resources that changed)."""

    RESOURCE_TYPE = RESOURCE_TYPE
    USER_AGENT = "controlplane-ratelimit"
    WHAT = "rate-limit config"

    def decode(self, version: str, resources: Sequence[Any]) -> Config:
        received = decode_resources(resources)
        wanted = set(self.options.domains)
        for name in sorted(set(received) - wanted):
            log.debug("ignoring domain %r: not served here (serving %s)", name, sorted(wanted))
        domains = dict(self.config.domains) if self.config else {}
        domains.update((name, domain) for name, domain in received.items() if name in wanted)
        return Config(version, domains)
