"""Rapid-reset protection (CVE-2023-44487), pure over `now`.

A client that opens streams and resets them at once makes the gateway start
work (route, auth, an upstream request) that nobody waits for, while the
concurrent-stream limit never bites: each reset stream is closed before the
next opens. Envoy's answer, which this follows, is to compare a connection's
resets with the streams it lets complete: a client that resets more than it
completes, past a floor, is abusing the connection and gets GOAWAY
ENHANCE_YOUR_CALM. A stream refused over max_concurrent_streams counts as a
reset too: it is the same flood seen from the other side.
"""

from __future__ import annotations

# Resets a connection may have in one window before its ratio is judged at all.
RESET_FLOOR = 100
RESET_WINDOW = 10.0  # seconds


class ResetGuard:
    """Resets and completed streams of one connection, in fixed windows."""

    __slots__ = ("_since", "completed", "floor", "resets", "window")

    def __init__(self, floor: int = RESET_FLOOR, window: float = RESET_WINDOW) -> None:
        self.floor = floor
        self.window = window
        self._since = 0.0
        self.resets = 0
        self.completed = 0

    def _roll(self, now: float) -> None:
        if now - self._since >= self.window:
            self._since = now
            self.resets = 0
            self.completed = 0

    def reset(self, now: float) -> bool:
        """One stream reset by the client (or refused); True: the connection is abusive."""
        self._roll(now)
        self.resets += 1
        return self.resets > self.floor and self.resets > self.completed

    def complete(self, now: float) -> None:
        """One stream answered in full."""
        self._roll(now)
        self.completed += 1
