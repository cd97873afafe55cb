"""Kubernetes as a source of specs, policies, certificates and endpoints (``serve --kubernetes``).

- ``informer``: list and watch one kind, resumed and relisted as a cluster's controllers do;
- ``mirror``: custom resources, ConfigMaps and Secrets as the files the compile reads;
- ``endpoints``: Services' ready endpoints from EndpointSlices, as EDS resources;
- ``source``: all of it for the control plane, with the leader's statuses and Events.
"""
