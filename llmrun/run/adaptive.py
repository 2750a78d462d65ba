"""The adaptive pace of a key: how each answer moves it (``succeeded``, ``refused``, the
``x-ratelimit-*`` headers), and telling a limit from noise. ``limits.KeyPool`` chooses keys and
waits for their paces; what an answer says about a key is here.

Adaptive pace, for a server whose limit is unannounced (429s, no ``x-ratelimit-*``). Such
a server usually holds a budget (a bucket) that starts full, so nothing is refused until the
budget is spent: passing the limit shows only later, and then what succeeds is exactly the
limit. Hence, per key:

- slow start: the pace begins at one request per round trip of the key's first request (as
  TCP's first window; at least ``START_RATE``) and each success adds ``SLOW_START_GAIN``
  requests/s, so the rate grows in proportion to itself (e-fold a second) whatever the limit,
  instead of sending ``concurrency`` requests at once (past a small limit most would be refused,
  and their backoff would spoil any measure). It cannot grow faster without refusals piling
  up: a budget of b seconds of the limit R hides it until some R * b requests too many went
  out, so at a gain of g per success the pace is about R * (1 + g * b) when the first 429
  comes; g = 1/s suits the one-second budgets providers describe;
- the first 429 ends it, as in TCP: half the pace (it doubles about every 0.7 s), never
  above what succeeded over the last second, times ``DECREASE``;
- a 429 soon after another (within ``OK_WINDOW_S`` of the last decrease, or the time
  ``MEASURE_OKS`` requests take at a slower pace) measures what succeeded since the first of
  them (time paused by a Retry-After left out), while the server's budget was empty: that is
  the limit, and the pace goes just under it; with too few answers since to measure (a small
  limit), the pace is still too fast, and drops by ``BLIND_DECREASE``;
- then AIMD: a small additive climb (``INCREASE_PER_OK``), ten times smaller (``NEAR_CEILING``)
  past the last measured limit, and ``DECREASE`` x what succeeded on the next 429, which
  comes late and close to the limit at that climb.

A 429 counts against the pace only for a request whose start was reserved after the last
decrease: the ones reserved or sent before it say nothing about the new pace.

Noise: servers also refuse a share of requests whatever the pace (overloaded, a gateway). A
cut needs evidence that the pace causes the refusals: a burst (most requests in flight
refused), spent ``x-ratelimit-remaining-*``, or more refusals at the current pace than the
share learnt as noise explains. In the slow start only a burst counts (past a limit the
doubling pace soon has most requests refused). A cut to under what succeeded is a trial: a
limit stops refusing there, noise goes on at its share; then the pace comes back and the share
is learnt. What succeeded while a server's budget drained overstates its limit, so a first
trial refused at a share like noise's may still be past it: a second cut under the first
decides (noise goes on refusing there, a limit stops). The share at the current pace is
counted over every answer since the pace last changed, so a limit passed later, refusing more
than the noise share, still shows. ``Retry-After`` holds the key only when its
budget is shown spent (a burst, or the headers); otherwise the refused request alone waits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from ..wire.ratelimit import header_number, reset_seconds
from .keystate import KeyState, Lease, Trial

# Adaptive pace, on the request rate of each key (see the module docstring):
# slow start: from one request per round trip of the key's first request (at least START_RATE
# requests/s), each success adds SLOW_START_GAIN requests/s (the rate grows e-fold a second,
# like TCP's slow start, whatever the limit) until the first 429;
START_RATE = 2.0
SLOW_START_GAIN = 1.0
# then AIMD: on a 429, at most once per DECREASE_EVERY_S and only for a request reserved
# after the last decrease, the pace drops to DECREASE x the rate that succeeded over the
# last OK_WINDOW_S, or since the first 429 when that was less than OK_WINDOW_S ago (once past
# the limit, what succeeds is the limit); each success then adds INCREASE_PER_OK requests/s,
# i.e. 0.5% a second whatever the rate. A 429 with too few answers since the last decrease to
# measure anything (a small limit) drops the pace by BLIND_DECREASE: a half (TCP's) fell well
# under the limit and took a minute to climb back, 0.9 took a refusal per step.
DECREASE = 0.9
DECREASE_EVERY_S = 0.02
INCREASE_PER_OK = 0.005
OK_WINDOW_S = 1.0
MEASURE_OKS = 4
MEASURE_UNPACED_S = 0.25
# Past the rate that succeeded at the last drop, the climb is this much slower.
NEAR_CEILING = 0.1
BLIND_DECREASE = 0.7
MIN_RATE = 0.05  # requests/s: never slower than one every 20 s
# Telling a limit from noise (see the module docstring). A 429 cuts the pace only when the
# refusals in the window are more than the learnt noise share explains (NOISE_SIGMAS standard
# deviations and one more), or when most of the latest answers were refused (a burst: more
# than half of the last max(BURST_MIN, in flight), those in flight counted as not refused). A
# cut to below what succeeded is a trial: TRIAL_REFUSALS more refusals there, at most
# NOISE_CAP of the answers, show a share the pace does not cause, and the pace comes back;
# TRIAL_ANSWERS / (the share before the cut) answers without them (or TRIAL_MAX_S) show a
# limit. Shares before a cut count at least TRIAL_MIN_ANSWERS answers.
NOISE_SIGMAS = 3.0
BURST_MIN = 4
# Holding the whole key for a Retry-After takes more: more than half of the latest
# max(HOLD_MIN, in flight). At the end of a run a handful of retries are in flight, and 3 of 5
# refused at random (7.5% noise) held every one of them a second, in 2 runs of 6; past a real
# limit the requests in flight are refused in a row.
HOLD_MIN = 8
TRIAL_REFUSALS = 3
TRIAL_ANSWERS = 4 * TRIAL_REFUSALS
TRIAL_MAX_S = 60.0
TRIAL_MIN_ANSWERS = 20  # a share measured on fewer answers is counted as if on this many
NOISE_CAP = 0.1
# A cut is a trial only with this many answers at the pace it cuts: a 429 just after another
# cut measured a share on a handful, and the trial then took a limit for noise.
TRIAL_MIN_BEFORE = 10


def succeeded(state: KeyState, lease: Lease, now: float) -> None:
    """A success for ``lease``'s request, answered at ``now``: the climb of the pace."""
    state.latest.append(False)
    if state.adaptive:
        if state.first_ok is None:
            state.first_ok = now
        state.oks.append(now)
        window = _window(state)
        oldest = now - window
        while state.oks[0] < oldest:
            state.oks.popleft()
        _count(state, lease, now, window, refused=False)
        rate = state.learnt.per_minute
        if state.slow_start and lease.probe and now > lease.start:
            # As TCP's first window: one request per round trip, the rate the probe alone
            # had (a fast server without a limit costs no slow start then).
            rate = max(START_RATE, 1.0 / (now - lease.start)) * 60.0
            # The next start was spaced at START_RATE; the probe's answer is the signal to go.
            state.learnt.next_at = min(state.learnt.next_at, now)
        if rate is not None:
            if state.slow_start:
                step = SLOW_START_GAIN
            elif state.ceiling is not None and rate >= state.ceiling * 60.0:
                step = INCREASE_PER_OK * NEAR_CEILING  # probe past the known limit gently
            else:
                step = INCREASE_PER_OK
            state.learnt.set_rate(rate + step * 60.0)


def refused(
    state: KeyState, lease: Lease, now: float, retry_after: float | None, *, spent: bool = False
) -> None:
    """A 429 (not a quota). ``spent``: the answer's ``x-ratelimit-remaining-*`` says the
    key's budget is used up. The key is paused for ``Retry-After`` only when its budget is
    shown spent (those headers, or most of the latest answers refused); otherwise the
    refused request alone waits (the caller's backoff). In adaptive mode the pace slows
    when the refusals show that the pace causes them (see the module docstring)."""
    state.latest.append(True)
    burst = spent or _burst(state, BURST_MIN)
    if retry_after and (spent or _burst(state, HOLD_MIN)):
        state.pause(now, retry_after)
    # Retry-After says when to come back, not how fast: a server that sends it but no
    # x-ratelimit-* is passed its limit as surely as by a bare 429, and pausing alone had
    # the key refused again after every pause (27-63% of requests, in adaptive_sim).
    if not state.adaptive:
        return
    window = _window(state)
    _count(state, lease, now, window, refused=True)
    # Once per window, as TCP does: a 429 for a request reserved before the last decrease
    # (at the pace of then) says nothing about the pace set since.
    if now - state.last_decrease < DECREASE_EVERY_S or lease.taken < state.last_decrease:
        return
    if not burst and (state.slow_start or not _more_than_noise(state)):
        # A share of refusals the pace does not cause (the caller retries the request). In
        # the slow start only a burst counts: past a limit the pace doubles within a second
        # and most requests are refused at once, while a lone 429 that ended it would leave
        # a noisy remote key crawling.
        return
    while state.oks and state.oks[0] < now - window:
        state.oks.popleft()
    # The rate that succeeded, measured since the first 429 of this run of them when the
    # last decrease is recent (the server's budget has been empty since: past the limit,
    # what succeeds is the limit), else over the last window (or since the first request).
    recently = now - state.last_decrease < window
    if recently:
        since = max(state.refused_since, now - window)
    else:
        first = state.first_start if state.first_start is not None else now
        since = max(first, now - window)
        if state.first_ok is not None and not state.slow_start:
            # From the key's first success, not its first request: the time before (a
            # process starting, a connection, the probe's round trip) is no measure of
            # the server. Counted in, a run's first random 429 read an eighth of the
            # real rate, and its trial held the pace there for seconds.
            since = max(since, state.first_ok)
    span, recent = _succeeded(state, since, now)
    # Too few answers yet to tell: leave it to backoff. An unpaced key measured over less
    # than MEASURE_UNPACED_S counts its connections opening: 1,500 answers/s 40 ms in, where
    # 2,750 came later, and a lone 429 there cut the pace to half of what the key did.
    # A limit passed unpaced refuses most requests in flight (a burst), which cuts at once.
    if span <= 0 or (recent < 3 and state.learnt.per_minute is None):
        return
    if state.learnt.per_minute is None and not burst and span < MEASURE_UNPACED_S:
        return
    tried = state.trial
    if tried is not None and not burst and _trial_share(state, tried) <= NOISE_CAP:
        return  # the cut under way is being tried: its answers will tell
    if not recently:
        state.refused_since = now
    if state.learnt.per_minute is None and not burst and not recently:
        # Unpaced: what the key does now, over the later half of the span (with enough
        # answers there); the earlier half holds its connections opening. Over the whole
        # span, a first random 429 read 2,448 answers/s where the key did 2,900, and its
        # trials held the pace at 68-76% of that for a quarter of a second.
        later_span, later = _succeeded(state, now - span / 2, now)
        if later >= TRIAL_MIN_ANSWERS:
            span, recent = later_span, later
    ok_rate: float | None = recent / max(span, DECREASE_EVERY_S) if recent >= 3 else None
    current = state.learnt.per_minute
    trial: Trial | None = None
    if not burst and ok_rate is not None and state.answered >= TRIAL_MIN_BEFORE:
        # A cut to under what succeeded: a limit stops refusing there, noise does not. A
        # cut in the middle of a trial (refused too often for noise) keeps the pace from
        # before the first, to come back to if the refusals turn out to be noise after all.
        share = state.refused / max(state.answered, TRIAL_MIN_ANSWERS)
        if tried is None:
            trial = Trial(now, current, state.slow_start, share, state.ceiling)
        else:
            trial = Trial(now, tried.rate, tried.slow_start, share, tried.ceiling)
    state.last_decrease = now
    state.answers.clear()  # the share is measured afresh at the new pace
    state.answered = state.refused = 0
    state.answered_here = state.refused_here = 0
    ended_slow_start, state.slow_start = state.slow_start, False
    if ok_rate is not None and not ended_slow_start:
        state.ceiling = ok_rate
    if current is None:
        rate = DECREASE * ok_rate if ok_rate else 1.0
    elif ended_slow_start:
        # As TCP at the end of its slow start: the pace was doubling (about every 0.7 s),
        # so half of it is the last one known to fit; past the budget the server held when
        # it started, it may fit none, so never above what succeeded.
        rate = DECREASE * min(current / 120.0, ok_rate or current / 120.0)
    elif ok_rate is None:
        # Refused again after a decrease, with too few answers since to measure anything:
        # still past the limit (the server's budget is empty): cut it blind.
        rate = BLIND_DECREASE * current / 60.0
    else:
        # Never more than halve at once: one noisy window must not stall the key.
        rate = DECREASE * max(min(current / 60.0, ok_rate), current / 120.0)
    state.learnt.set_rate(max(MIN_RATE, rate) * 60.0)
    state.trial = trial


def _count(state: KeyState, lease: Lease, now: float, window: float, *, refused: bool) -> None:
    """Count an answer in the share refused at the current pace, and in the trial."""
    if lease.taken < state.last_decrease:
        return  # reserved at an earlier pace
    answers = state.answers
    answers.append((now, refused))
    state.answered += 1
    state.refused += refused
    state.answered_here += 1
    state.refused_here += refused
    oldest = now - window
    while answers[0][0] < oldest:
        _, was_refused = answers.popleft()
        state.answered -= 1
        state.refused -= was_refused
    trial = state.trial
    if trial is None or lease.taken < trial.at:
        return
    trial.answered += 1
    trial.refused += refused
    share = _trial_share(state, trial)
    if trial.refused >= TRIAL_REFUSALS and share > NOISE_CAP:
        # Still refused often: past a limit, the cut was not deep enough; the next 429
        # cuts again.
        state.trial = None
    elif trial.refused >= TRIAL_REFUSALS and trial.answered < TRIAL_MIN_ANSWERS:
        pass  # too few answers yet to learn a share from
    elif trial.refused >= TRIAL_REFUSALS and not trial.deeper and not state.noise_counts[1]:
        # Refused at a share like noise's: or a limit passed by less than the cut (the
        # share before it, measured while a server's budget drained, looked small). Below
        # both, noise goes on refusing and a limit stops: cut once more to tell.
        state.trial = Trial(now, trial.rate, trial.slow_start, share, trial.ceiling, deeper=True)
        state.last_decrease = now
        state.answers.clear()
        state.answered = state.refused = 0
        state.answered_here = state.refused_here = 0
        pace = state.learnt.per_minute
        if pace is not None:
            state.learnt.set_rate(max(MIN_RATE * 60.0, DECREASE * pace))
    elif trial.refused >= TRIAL_REFUSALS:
        # Refused as often under what succeeded before the cut: the pace is not the
        # cause. Learn that share, and take the pace back.
        state.trial = None
        state.noise_counts = (
            state.noise_counts[0] + trial.refused,
            state.noise_counts[1] + trial.answered,
        )
        state.learnt.set_rate(trial.rate)
        state.answered_here = state.refused_here = 0
        state.slow_start = trial.slow_start
        state.ceiling = trial.ceiling
    elif (
        trial.answered >= TRIAL_ANSWERS * (1 + trial.refused) / trial.share
        or now - trial.at >= TRIAL_MAX_S
    ):
        # Enough answers that noise at the share before the cut would have shown a few
        # refusals by now: the pace was the cause. Each refusal the trial had asks for as
        # many answers again: the share before a cut is measured on few answers (2 of 67
        # at 1% noise), and one refusal in 400 answers called a limit cut again and again.
        state.trial = None


def read_headers(state: KeyState, headers: Mapping[str, str], now: float) -> None:
    """``x-ratelimit-*``: wait for the reset when a budget is spent; in adaptive mode,
    pace to the announced request limit."""
    raw = getattr(headers, "raw", None)  # httpx's: one pass, not a lookup per name
    if raw is not None and not any(k[:12].lower() == b"x-ratelimit-" for k, _ in raw):
        return
    for kind in ("requests", "tokens"):
        remaining = header_number(headers.get(f"x-ratelimit-remaining-{kind}"))
        if remaining is not None and remaining < 1:
            reset = reset_seconds(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset:
                state.pause(now, reset)
    if state.adaptive and not state.limit_given:
        limit = header_number(headers.get("x-ratelimit-limit-requests"))
        if limit and state.requests.per_minute != limit:
            state.requests.set_rate(limit)
        if limit and state.slow_start:
            state.slow_start = False  # the server said what the limit is: pace to it
            state.learnt.set_rate(None)


def _burst(state: KeyState, least: int) -> bool:
    """Most of the requests in flight refused: more than half of the latest
    max(least, in flight) answers, those not answered yet counted as not refused (a 429
    comes back sooner than an answer)."""
    size = max(least, state.in_flight)
    refused = sum(itertools.islice(reversed(state.latest), size))
    return refused * 2 > size


def _trial_share(state: KeyState, trial: Trial) -> float:
    """The share refused since the trial's cut, the requests in flight counted as not refused
    (a 429 comes back sooner than an answer)."""
    return trial.refused / max(1, trial.answered + state.in_flight)


def _more_than_noise(state: KeyState) -> bool:
    """More refusals at the current pace than the learnt noise share explains, counted over
    every answer at this pace (a window of a second holds too few to tell 16% from 7%)."""
    refused, answered = state.noise_counts
    p = min(NOISE_CAP, refused / answered) if answered else 0.0
    n = state.answered_here
    return state.refused_here >= n * p + NOISE_SIGMAS * math.sqrt(n * p * (1 - p)) + 1


def _succeeded(state: KeyState, since: float, now: float) -> tuple[float, int]:
    """(seconds, successes) from ``since`` to ``now``, the time the key was paused left out:
    it sent nothing then, which is no part of what the server let through."""
    paused = min(now, state.paused_until) - max(since, state.paused_from)
    return now - since - max(0.0, paused), sum(1 for t in state.oks if t > since)


def _window(state: KeyState) -> float:
    """How far back successes are counted: OK_WINDOW_S, or long enough to hold MEASURE_OKS at
    a slow pace (a second holds none at 0.5 requests/s, and every 429 would cut blind)."""
    pace = state.learnt.per_minute
    return OK_WINDOW_S if not pace else max(OK_WINDOW_S, MEASURE_OKS * 60.0 / pace)
