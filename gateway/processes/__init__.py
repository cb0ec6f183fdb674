"""``serve --processes N``: N gateway processes on one port, under one supervising parent.

supervisor.py (the parent: spawn, watch, restart, drain), worker.py (one child process),
sockets.py (the shared port), aggregate.py (one /metrics for all), cpus.py (default sizes).
"""
