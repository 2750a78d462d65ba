"""What a key is while a run paces it: its paces, what the server told about it, and the
lease a request holds on it (the pacing itself is ``limits.KeyPool``)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import anyio

from ..recipe.model import Endpoint
from ..redaction import fingerprint

BURST_KEEP = 256  # the latest answers kept to tell a burst (in flight at most this many)


class Pace:
    """Even spacing of a resource at ``per_minute`` units (requests or tokens)."""

    def __init__(self, per_minute: float | None) -> None:
        self.per_minute = per_minute
        self.next_at = 0.0  # when the next unit may start

    def set_rate(self, per_minute: float | None) -> None:
        if not self.per_minute:
            # Unpaced until now: starts reserved before (a slow start's first) no longer hold.
            self.next_at = 0.0
        self.per_minute = per_minute

    def ready_at(self, now: float) -> float:
        return max(now, self.next_at) if self.per_minute else now

    def take(self, start: float, amount: float) -> None:
        """Reserve ``amount`` units at ``start`` (>= ready_at)."""
        if self.per_minute:
            self.next_at = max(start, self.next_at) + amount * 60.0 / self.per_minute

    def give_back(self, amount: float) -> None:
        """Correct a reservation by ``amount`` units (negative: more was used than reserved)."""
        if self.per_minute:
            self.next_at -= amount * 60.0 / self.per_minute


@dataclass
class KeyState:
    """One key's limits and what the server has told about it."""

    key: str | None
    requests: Pace
    tokens: Pace
    adaptive: bool
    endpoint: str | None = None  # one of provider.base_urls (None: the provider's own)
    # The recipe set its request limit (run.requests_per_minute, or its endpoint's): headers
    # announcing another do not replace it.
    limit_given: bool = False
    down_until: float = 0.0  # the endpoint stopped answering: tried again from then
    trusted: bool = False  # answered once: any number of requests may use it
    probe: anyio.Event | None = None  # set while the first request is out
    retired: str | None = None  # why, once retired
    paused_until: float = 0.0  # Retry-After or a ratelimit reset
    paused_from: float = 0.0  # when the latest pause began
    learnt: Pace = field(default_factory=lambda: Pace(None))  # adaptive request pace
    last_decrease: float = -math.inf
    refused_since: float = -math.inf  # the first decrease of the latest run of 429s
    ceiling: float | None = None  # requests/s that succeeded at the last measured limit
    oks: deque[float] = field(default_factory=deque)  # recent success times
    first_start: float | None = None  # of the key's first request (adaptive mode)
    first_ok: float | None = None  # when it first answered with a success (adaptive mode)
    slow_start: bool = False  # adaptive: climbing from START_RATE until the first 429
    in_flight: int = 0
    # Answers to requests reserved since the last decrease, over the measuring window:
    # (answered at, refused), with running counts, for the share refused at the current pace.
    answers: deque[tuple[float, bool]] = field(default_factory=deque)
    answered: int = 0
    refused: int = 0
    # The same since the pace was last cut or taken back, not only over the window: the share
    # refused at this pace, told from the noise share on as many answers as it has had.
    answered_here: int = 0
    refused_here: int = 0
    latest: deque[bool] = field(default_factory=lambda: deque(maxlen=BURST_KEEP))  # refused?
    # (refused, answered) since a trial showed refusals the pace does not cause: their share
    noise_counts: tuple[int, int] = (0, 0)
    trial: Trial | None = None  # the latest cut, until its answers tell limit from noise
    fingerprint: str | None = field(init=False, default=None)  # of the key (redaction.py)

    def __post_init__(self) -> None:
        # Once per key, not per call: every answered call's row names its key by it.
        self.fingerprint = None if self.key is None else fingerprint(self.key)

    @property
    def name(self) -> str:
        name = self.fingerprint or "no key"
        return name if self.endpoint is None else f"{name} at {self.endpoint}"

    def pause(self, now: float, seconds: float) -> None:
        """Send nothing on this key for ``seconds`` (a pause under way is extended)."""
        if now >= self.paused_until:
            self.paused_from = now
        self.paused_until = max(self.paused_until, now + seconds)

    def ready_at(self, now: float) -> float:
        return max(
            self.requests.ready_at(now),
            self.tokens.ready_at(now),
            self.learnt.ready_at(now),
            self.paused_until,
        )


@dataclass(slots=True)
class Trial:
    """A cut made on a share of refusals, to be undone if that share was noise: the pace
    before it, and the answers to requests reserved since."""

    at: float
    rate: float | None  # the pace before the cut (None: unpaced)
    slow_start: bool
    share: float  # refused / answered in the window that led to the cut
    ceiling: float | None
    refused: int = 0
    answered: int = 0
    deeper: bool = False  # a second cut, under a first that was refused at a share like noise's


@dataclass(slots=True)
class Lease:
    """A reserved start on a key; ``probe`` when this request is the key's first."""

    state: KeyState
    tokens: int
    probe: bool
    start: float = 0.0  # when it was allowed to start
    taken: float = 0.0  # when the start was reserved (at the pace of that moment)

    @property
    def key(self) -> str | None:
        return self.state.key


def key_state(
    key: str | None,
    endpoint: Endpoint | None,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
    adaptive: bool,
) -> KeyState:
    """A key on an endpoint, with the endpoint's own limits where provider.endpoints gives
    them, else the run's."""
    if endpoint is not None and endpoint.requests_per_minute is not None:
        requests_per_minute = endpoint.requests_per_minute
    if endpoint is not None and endpoint.tokens_per_minute is not None:
        tokens_per_minute = endpoint.tokens_per_minute
    return KeyState(
        key,
        Pace(requests_per_minute),
        Pace(tokens_per_minute),
        adaptive,
        None if endpoint is None else endpoint.url,
        limit_given=requests_per_minute is not None,
    )
