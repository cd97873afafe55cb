"""The WAF service's ADS stream: where its rules come from (:mod:`controlplane.xds.subscriber`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..xds.subscriber import Subscriber
from .config import RESOURCE_TYPE, Config, decode


class RulesSubscriber(Subscriber[Config]):
    RESOURCE_TYPE = RESOURCE_TYPE
    USER_AGENT = "controlplane-waf"
    WHAT = "WAF config"

    def decode(self, version: str, resources: Sequence[Any]) -> Config:
        if not resources and self.config is not None:
            return dataclasses.replace(self.config, version=version)
        return decode(version, resources)
