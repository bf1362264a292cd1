"""Notify: libvirt event subscription, the domain's state as virt-handler sees it (the
relay), the notifier and its queues, KubeVirt's domain JSON and state vocabulary, the
virt-launcher-events receiver and its virt-handler stand-in."""
