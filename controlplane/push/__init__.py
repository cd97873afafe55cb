"""Pushed specs: CI pipelines replace the OpenAPI description of the APIs they own through the
control plane's push API, and the routes follow.

- ``policy``: who may push what (the platform policy's ``push.clients``);
- ``store``: every version pushed, on disk, and which one is live (what a restarted control
  plane serves), with an audit log of every request and decision;
- ``api``: the HTTP API (TLS, bearer tokens or client certificates) and its rollouts: a push
  compiles with everything else or is refused whole, then waits for every Envoy's ACK and is
  rolled back when one NACKs;
- ``client``: the ``push`` command;
- ``pull``: a source that polls a backend's published OpenAPI URL and pushes what changes.
"""
