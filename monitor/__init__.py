"""virt-launcher-monitor: the compute container's PID 1 (or child subreaper).

Synchronous and deliberately small: its resident memory is part of every VM's overhead,
so nothing here may import asyncio, grpc, libvirt, uvloop, structlog, subprocess,
threading, psutil or logging (tests/unit/test_monitor_imports.py enforces it).
"""
