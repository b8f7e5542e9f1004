"""A comm relay: widgets talk to it instead of a front end, so tests play the browser's part."""

from __future__ import annotations

from typing import Any

from comm.base_comm import BaseComm


class RelayComm(BaseComm):
    """A comm that records what the kernel publishes."""

    def __init__(self, *args: Any, relay: CommRelay, **kwargs: Any) -> None:
        self.relay = relay
        self.published: list[tuple[str, Any, list[Any]]] = []
        super().__init__(*args, **kwargs)

    def publish_msg(
        self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None, **keys: Any
    ) -> None:
        self.published.append((msg_type, data, list(buffers or [])))


class CommRelay:
    """Creates :class:`RelayComm`s for new widgets; ``front_end_*`` deliver messages to them."""

    def create_comm(self, *args: Any, **kwargs: Any) -> RelayComm:
        return RelayComm(*args, relay=self, **kwargs)

    @staticmethod
    def _deliver(widget: Any, data: dict[str, Any], buffers: list[Any]) -> None:
        widget.comm.handle_msg(
            {"content": {"comm_id": widget.comm.comm_id, "data": data}, "buffers": buffers}
        )

    def front_end_sends(self, widget: Any, content: Any, buffers: list[bytes] | None = None) -> None:
        """A custom message (``model.send``) from the front end, with binary buffers."""
        self._deliver(
            widget, {"method": "custom", "content": content}, [memoryview(b) for b in buffers or []]
        )

    def front_end_sets(self, widget: Any, **state: Any) -> None:
        """A state update (``model.set`` + ``save_changes``) from the front end."""
        self._deliver(widget, {"method": "update", "state": state, "buffer_paths": []}, [])

    @staticmethod
    def customs(widget: Any) -> list[Any]:
        """Custom messages the kernel sent to the front end."""
        return [
            d["content"]
            for t, d, _ in widget.comm.published
            if t == "comm_msg" and d.get("method") == "custom"
        ]

    @staticmethod
    def updates(widget: Any) -> list[dict[str, Any]]:
        """State updates the kernel sent to the front end."""
        return [
            d["state"] for t, d, _ in widget.comm.published if t == "comm_msg" and d.get("method") == "update"
        ]
