"""The WAF service's ADS stream: where its rules come from (:mod:`controlplane.xds.subscriber`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import Diagnostic, InputError
from ..xds.subscriber import Subscriber
from .config import RESOURCE_TYPE, Config, decode


class RulesSubscriber(Subscriber[Config]):
    RESOURCE_TYPE = RESOURCE_TYPE
    USER_AGENT = "controlplane-waf"
    WHAT = "WAF config"

    def version(self) -> str:
        return self.config.version if self.config is not None else ""

    def apply(self, type_url: str, version: str, resources: Sequence[Any]) -> Config:
        if type_url != RESOURCE_TYPE:
            raise InputError(
                [Diagnostic(f"a response of type {type_url!r}; subscribed to {RESOURCE_TYPE}", "response")]
            )
        if not resources and self.config is not None:
            return Config(
                version, self.config.rules, self.config.max_body_bytes, self.config.source, self.config.models
            )
        return decode(version, resources)
