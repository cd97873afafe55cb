"""The WAF service beside Envoy: Envoy's ext_authz asks it (over HTTP/1.1) about each inspected
request (its path, query, headers and whole body), and its ext_proc masks sensitive responses;
its rules and each operation's positive model are pushed by the control plane over xDS.
``python -m controlplane waf``."""
