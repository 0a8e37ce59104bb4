"""Limits on the owner's OpenAI key: requests per visitor per hour and in all per day, and who a visitor is."""

from __future__ import annotations

import collections
import ipaddress
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import SettingError, UserError

# Requests made with the server's own key (OPENAI_API_KEY); a visitor's pasted key is never counted.
log = logging.getLogger(__name__)

ENV_CLIENT_LIMIT = "EUROSAT_GPT4O_CLIENT_LIMIT"  # per visitor in any hour
ENV_DAILY_LIMIT = "EUROSAT_GPT4O_DAILY_LIMIT"  # all visitors together, per UTC day
ENV_TRUSTED_PROXIES = "EUROSAT_TRUSTED_PROXIES"  # proxies in front of the app that append to X-Forwarded-For
HOUR, DAY = 3600, 86400


@dataclass(frozen=True)
class Limits:
    """How many requests the server's own key serves, and how visitors are told apart (see `client_id`)."""

    per_client_per_hour: int = 10
    per_day: int = 200
    trusted_proxies: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Limits:
        """The limits set in the environment; a value that is not a whole number >= 0 raises ValueError.

        An unreadable limit (SettingError) stops the app at startup rather than fall back: a typo must not turn a
        budget the owner chose into one they did not. Trusted proxies default to 1 on Hugging Face
        Spaces (SPACE_ID is set), which serve apps behind a proxy, and to 0 elsewhere. Set the real
        count: one too many lets visitors choose their key; one too few makes them share one.
        """
        def number(name: str, default: int) -> int:
            text = environ.get(name, "").strip()
            if not text:
                return default
            if not (text.isascii() and text.isdigit()):
                raise SettingError(f"{name} must be a whole number of 0 or more, got {text[:20]!r}.")
            return int(text)

        return cls(number(ENV_CLIENT_LIMIT, cls.per_client_per_hour), number(ENV_DAILY_LIMIT, cls.per_day),
                   number(ENV_TRUSTED_PROXIES, 1 if environ.get("SPACE_ID") else 0))


def client_id(host: str | None, forwarded_for: str | None, trusted_proxies: int = 0) -> str:
    """The key a visitor's requests are counted under: their address, which they cannot choose.

    `host` is gr.Request.client.host and `forwarded_for` its X-Forwarded-For header. Behind
    `trusted_proxies` proxies, the address the outermost one saw is that many entries from the end
    (entries before it are the client's own text). With none, uvicorn still takes `host` from the
    header when the peer is local, which Gradio's MCP relay is, copying the caller's headers: such
    a host is the caller's text, so those requests share one key. IPv6 addresses count per /64.
    """
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    if trusted_proxies > 0:
        address = hops[-trusted_proxies] if len(hops) >= trusted_proxies else ""
    else:
        address = "" if host in hops else host or ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def _wait(seconds: float) -> str:
    """A duration as people read it: 'under a minute', '23 min', '5 h 12 min'."""
    minutes = math.ceil(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min" if minutes > 1 else "under a minute"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _clock_time(when: float) -> str:
    """A moment as a UTC wall-clock time, the zone named: visitors are anywhere."""
    return time.strftime("%H:%M UTC", time.gmtime(when))


class LimitReached(UserError):
    """A request on the server's own key that a limit refuses; the message says when the next one is possible."""


def _refused(limit: str, message: str) -> LimitReached:
    log.warning("a GPT-4o request on the server's key was refused: %s limit", limit)
    return LimitReached(message)


OWN_KEY = ("Your own OpenAI API key still works and is not counted: paste it into the key field "
           "(API: the api_key argument).")


class Budget:
    """Counts requests made with the server's key, per client in a sliding hour and in total per UTC day.

    In memory and thread-safe: a request is counted (or refused) under one lock before it is sent,
    so concurrent requests can never overshoot a limit. Only requests let through are kept, so the
    memory is bounded by the daily limit. `clock` returns seconds since the epoch (UTC).
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self.limits, self._clock = limits, clock
        self._lock = threading.Lock()
        self._recent: dict[str, collections.deque[float]] = {}
        self._day, self._today = -1, 0

    def take(self, client: str) -> None:
        """Count one request of `client`, or raise LimitReached saying when it is possible again."""
        if not (self.limits.per_client_per_hour and self.limits.per_day):
            raise _refused("zero", f"This server does not lend its own OpenAI key for GPT-4o (its limit is 0). "
                                    f"{OWN_KEY}")
        with self._lock:
            now = self._clock()
            day = int(now // DAY)
            if day != self._day:
                self._day, self._today = day, 0
                self._forget(now)
            recent = self._recent.get(client, collections.deque())
            while recent and now - recent[0] >= HOUR:
                recent.popleft()
            if len(recent) >= self.limits.per_client_per_hour:
                raise _refused("per-client", self._client_message(recent[0] + HOUR - now, now))
            if self._today >= self.limits.per_day:
                raise _refused("daily", self._daily_message((day + 1) * DAY - now))
            recent.append(now)
            self._recent[client] = recent
            self._today += 1

    def _forget(self, now: float) -> None:
        """Drop the clients with nothing in the last hour (once a day, under the lock)."""
        self._recent = {c: q for c, q in self._recent.items() if q and now - q[-1] < HOUR}

    def _client_message(self, wait: float, now: float) -> str:
        return (f"You have reached this server's limit of {self.limits.per_client_per_hour} GPT-4o requests per "
                f"hour on its own OpenAI key. The next one is possible in {_wait(wait)} (at "
                f"{_clock_time(now + wait)}). {OWN_KEY}")

    def _daily_message(self, wait: float) -> str:
        return (f"This server's daily limit of {self.limits.per_day} GPT-4o requests on its own OpenAI key, shared "
                f"by all visitors, is used up. It resets at 00:00 UTC, in {_wait(wait)}. {OWN_KEY}")
