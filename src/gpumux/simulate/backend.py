"""A simulated vLLM backend: batched decoding with a per-sequence and a per-model speed.

Owns: one model's running batch (at most `max_num_seqs` sequences; more wait inside the
backend, as in vLLM's scheduler) and the processor-sharing arithmetic: every running
sequence advances at `min(SEQ_TPS, MODEL_TPS / batch)` tokens per second, so a lone
request is latency-bound and a full batch throughput-bound.
`Fleet` holds every model's backend and its serving spans (the fake process ids are the
simulated effects' business).
Does not: know about the scheduler; the engine feeds it grants and asks for completions.
Pure: `now` is passed in.
"""

from __future__ import annotations

from collections import deque

#: Decode speed of one sequence alone (tokens/s) and of the whole batch, per model.
SEQ_TPS = 50.0
MODEL_TPS = 1500.0
#: Prompt tokens cost this many times less than generated ones (prefill is batched).
PREFILL_SPEEDUP = 10.0
_DONE = 1e-6


def work_of(prompt_tokens: int, output_tokens: int) -> float:
    """Decode-equivalent tokens one request costs."""
    return output_tokens + prompt_tokens / PREFILL_SPEEDUP


class Backend:
    def __init__(self, max_num_seqs: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.running: dict[int, float] = {}  # ticket -> work left
        self.waiting: deque[tuple[int, float]] = deque()
        self._at = 0.0

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def rate(self) -> float:
        return min(SEQ_TPS, MODEL_TPS / len(self.running)) if self.running else 0.0

    def _advance(self, now: float) -> None:
        step = self.rate() * (now - self._at)
        self._at = now
        for ticket in self.running:
            self.running[ticket] -= step

    def _fill(self) -> None:
        while self.waiting and len(self.running) < self.max_num_seqs:
            ticket, work = self.waiting.popleft()
            self.running[ticket] = work

    def add(self, ticket: int, work: float, now: float) -> None:
        self._advance(now)
        self.waiting.append((ticket, work))
        self._fill()

    def next_done_at(self) -> float | None:
        if not self.running:
            return None
        return self._at + max(0.0, min(self.running.values())) / self.rate()

    def finish_due(self, now: float) -> list[int]:
        """Tickets whose last token is out by `now` (called at `next_done_at`)."""
        self._advance(now)
        least = min(self.running.values(), default=0.0)
        done = [t for t, left in self.running.items() if left <= max(least, 0.0) + _DONE]
        for ticket in done:
            del self.running[ticket]
        self._fill()
        return done

    def remove(self, ticket: int, now: float) -> bool:
        """The client left mid-response, or the engine aborted it. True if it was here."""
        self._advance(now)
        found = self.running.pop(ticket, None) is not None
        if not found:
            kept = [(t, w) for t, w in self.waiting if t != ticket]
            found = len(kept) != len(self.waiting)
            self.waiting = deque(kept)
        self._fill()
        return found

    def abort_all(self, now: float) -> list[int]:
        """The process went away (crash, stop, or sleep with mode=abort)."""
        self._advance(now)
        tickets = [*self.running, *(t for t, _ in self.waiting)]
        self.running.clear()
        self.waiting.clear()
        return tickets


class Fleet:
    """Every model's backend, and the spans during which each was serving."""

    def __init__(self, batch_sizes: dict[str, int], busy: dict[str, list[tuple[float, float]]]):
        self.backends = {alias: Backend(size) for alias, size in batch_sizes.items()}
        self.version = dict.fromkeys(batch_sizes, 0)  # completions scheduled earlier are stale
        self._busy = busy
        self._busy_since: dict[str, float] = {}

    def changed(self, model: str, now: float) -> float | None:
        """Note a change to `model`'s batch; return when its next request will finish."""
        backend = self.backends[model]
        self.version[model] += 1
        if backend.busy and model not in self._busy_since:
            self._busy_since[model] = now
        elif not backend.busy and model in self._busy_since:
            self._busy[model].append((self._busy_since.pop(model), now))
        return backend.next_done_at()
