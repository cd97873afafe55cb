"""The WAF service: an ext_authz gRPC server beside Envoy that inspects each request (its
path, query, headers and whole body) for attacks, with rules and per-operation settings
pushed by the control plane over xDS. ``python -m controlplane waf``."""
