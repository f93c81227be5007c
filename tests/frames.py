"""What every test client of the chat contract shares, whatever carries its frames."""

from __future__ import annotations

from typing import Any


class FrameClient:
    """Contract helpers on top of a subclass's ``send(frame)`` and ``receive(timeout)``."""

    #: Default wait for one frame in ``receive_until``.
    until_timeout: float = 10

    async def send(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        raise NotImplementedError

    async def receive_until(self, kind: str, timeout: float | None = None) -> list[dict[str, Any]]:
        """All frames up to and including the first of type ``kind``."""
        frames = []
        while True:
            frame = await self.receive(self.until_timeout if timeout is None else timeout)
            frames.append(frame)
            if frame["type"] == kind:
                return frames
