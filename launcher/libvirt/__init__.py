"""libvirt: the connection (event-loop thread, connect/reconnect, keepalive), its errors,
the daemons' configs and their supervision."""
