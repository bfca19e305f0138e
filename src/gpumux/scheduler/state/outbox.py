"""The command buffer of one input: what the core decided, in the order it decided it.

Owns: the list of commands one `SchedulerCore.handle` call produces, and the shorthands
for the two commands every part writes (a structured note, an admin reply).
Does not: execute anything. The core makes one per input and hands it to each part it
calls, so a part's effects are visible in its signature instead of hidden in shared
state; the runner and the simulator execute what comes out. Pure.
"""

from __future__ import annotations

from gpumux.scheduler.messages import AdminRefusal, AdminReply, Command, Note


class Outbox:
    def __init__(self) -> None:
        self._commands: list[Command] = []

    def add(self, command: Command) -> None:
        self._commands.append(command)

    def note(self, event: str, fields: dict[str, object]) -> None:
        self._commands.append(Note(event, fields))

    def reply(
        self,
        reply: int,
        detail: str,
        *,
        refusal: AdminRefusal | None = None,
        data: dict[str, object] | None = None,
    ) -> None:
        self._commands.append(AdminReply(reply, detail, refusal, data or {}))

    def take(self) -> list[Command]:
        """Everything added so far, in order; the outbox is empty afterwards."""
        commands, self._commands = self._commands, []
        return commands
