"""clreg: the daemon that ties registry, learner, monitor and serving together."""

__version__ = "0.1.0"
