"""Control plane for Envoy-based API gateways: OpenAPI + policy in, Envoy configuration out."""

from .compiler import CompileResult, compile
from .errors import ControlPlaneError, Diagnostic, EnvoyRejectedError, InputError, Severity
from .resources import Resources

__all__ = [
    "CompileResult",
    "ControlPlaneError",
    "Diagnostic",
    "EnvoyRejectedError",
    "InputError",
    "Resources",
    "Severity",
    "compile",
]
