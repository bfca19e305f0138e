"""Passive health: streaks of 5xx answers that backends themselves sent (ecosystem §4 case 14).

Owns: per model, the consecutive count of responses whose status the backend returned
≥ 500, keyed to the backend process (pid) that sent them, and the hand-off to whoever
confirms a suspected backend once a streak reaches `passive_5xx_threshold`.
Does not: restart anything or judge a streak. A client can make vLLM answer 500 on
purpose (a poisoned request), so a streak is only a suspicion; the health monitor
confirms it with a probe of its own before the scheduler is told. Errors gpumux made up
itself (queue full, timeouts, refused connections, crashes) never reach this module:
they have their own handling.

Like Envoy's outlier detection `consecutive_5xx`. No I/O and no clock, so the counting
is unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable

#: Called with (model, pid) each time a backend's streak is at or above the threshold.
OnStreak = Callable[[str, int], None]


class BackendStreaks:
    def __init__(self, threshold: int) -> None:
        """`threshold` consecutive backend 5xx make a suspect; 0 turns counting off."""
        self.threshold = threshold
        # model -> (pid, count): only the latest process of a model matters, so the table
        # stays as small as the model table however often backends restart.
        self._streaks: dict[str, tuple[int, int]] = {}
        self._on_streak: OnStreak | None = None

    def watch(self, on_streak: OnStreak) -> None:
        """Tell `on_streak` about suspects (it is called again on every further 5xx; the
        watcher deduplicates and rate-limits its own confirmations)."""
        self._on_streak = on_streak

    def record(self, model: str, pid: int | None, status: int) -> None:
        """One response status as `model`'s backend process `pid` sent it."""
        if self.threshold == 0 or pid is None:
            return
        held_pid, count = self._streaks.get(model, (pid, 0))
        if held_pid != pid:
            count = 0  # a new process starts with a clean record
        if status < 500:
            self._streaks.pop(model, None)
            return
        count += 1
        self._streaks[model] = (pid, count)
        if count >= self.threshold and self._on_streak is not None:
            self._on_streak(model, pid)

    def count(self, model: str, pid: int) -> int:
        held_pid, count = self._streaks.get(model, (pid, 0))
        return count if held_pid == pid else 0

    def reset(self, model: str, pid: int) -> None:
        """Forget `pid`'s streak (confirmed either way); a newer process's is kept."""
        held = self._streaks.get(model)
        if held is not None and held[0] == pid:
            del self._streaks[model]
