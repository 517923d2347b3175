"""The NodeAgent: how a cluster leader's NodeActor introduces itself to a member's NodeActor.

Members of a Thespian convention register with the leaders only and know no
actor of theirs.  So the leader places a NodeAgent on the member (its
``actorSystemCapabilityCheck`` accepts only the node named in the
requirements); the agent finds that node's Supervisor by its global name and
hands it the ``Introduce``, which the Supervisor passes to its NodeActor.
"""

from __future__ import annotations

from typing import Any, Final

from thespian.actors import ActorExitRequest

from actors._actor import ContactorActor
from actors.messages import Introduce

__all__ = ["NodeAgent", "NODE_CAP", "AGENT_LINGER"]

NODE_CAP: Final = "contactor.node"  # the capability that names a node
AGENT_LINGER: Final = 10.0


class NodeAgent(ContactorActor):
    """Placed on a member by a leader: introduces the leader to that node's NodeActor, then exits."""

    role = "node-agent"

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: dict[str, Any]) -> bool:
        return bool(capabilities.get(NODE_CAP) == requirements.get(NODE_CAP))

    def on_Introduce(self, msg: Introduce, sender: Any) -> None:
        from actors.daemon import SUPERVISOR_NAME

        supervisor = self.createActor("actors.supervisor.Supervisor", globalName=SUPERVISOR_NAME)
        self.send(supervisor, msg)
        # Not at once: the send waits for the global name's lookup, and an exit now would drop it.
        self.wakeupAfter(AGENT_LINGER)

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        self.send(self.myAddress, ActorExitRequest())
