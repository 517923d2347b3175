"""contactor: a container runtime built as an actor system.

A daemon of Thespian actors keeps container records, runs each container under
its own shim process with runc (or crun), watches cgroups and publishes
lifecycle events; the ``contactor`` CLI talks to it over a root-only unix
socket.  The client API is ``actors.client``; everything lives in the
submodules, one concern each (nothing is re-exported here, so importing one
costs no other).
"""

__all__: list[str] = []

__version__ = "0.1.0"
