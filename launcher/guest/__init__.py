"""The guest agent: poller and cache, KubeVirt's guest-info JSON, freeze/thaw, and the
virt-freezer command."""
