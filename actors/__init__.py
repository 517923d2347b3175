"""contactor: a container runtime built as an actor system.

A daemon of Thespian actors keeps container records, runs each container under
its own shim process with runc (or crun), watches cgroups and publishes
lifecycle events; the ``contactor`` CLI talks to it over a root-only unix
socket.  The client API is re-exported here; everything else lives in the
submodules, one concern each.
"""

__all__: list[str] = []

__version__ = "0.1.0"
