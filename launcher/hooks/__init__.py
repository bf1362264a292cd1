"""Hook sidecars (KubeVirt's pkg/hooks): discovery of the sidecars' sockets, the callbacks
the launcher makes (OnDefineDomain, PreCloudInitIso, Shutdown), and a small server library
for writing sidecars in Python (launcher.hooks.sidecar)."""
