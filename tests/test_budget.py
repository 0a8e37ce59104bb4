"""Limits on the server's own OpenAI key: per visitor per sliding hour, per UTC day, and who a visitor is."""

import calendar

import pytest

from eurosat.budget import OWN_KEY, Budget, LimitReached, Limits, client_id
from eurosat.errors import SettingError, UserError

NOON = calendar.timegm((2026, 1, 10, 12, 0, 0))  # a Saturday, 12:00 UTC


class Clock:
    """A clock the test moves by hand: seconds since the epoch, like time.time."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refused(budget: Budget, client: str) -> str:
    with pytest.raises(LimitReached) as info:
        budget.take(client)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "limit" in message and message.endswith(OWN_KEY)
    return message


def test_limits_come_from_the_environment():
    assert Limits.from_env({}) == Limits(10, 200, 0)
    assert Limits.from_env({"EUROSAT_GPT4O_CLIENT_LIMIT": " 3 ", "EUROSAT_GPT4O_DAILY_LIMIT": "50"}) == Limits(3, 50, 0)
    assert Limits.from_env({"SPACE_ID": "owner/space"}).trusted_proxies == 1
    assert Limits.from_env({"SPACE_ID": "owner/space", "EUROSAT_TRUSTED_PROXIES": "2"}).trusted_proxies == 2


@pytest.mark.parametrize("name", ["EUROSAT_GPT4O_CLIENT_LIMIT", "EUROSAT_GPT4O_DAILY_LIMIT", "EUROSAT_TRUSTED_PROXIES"])
@pytest.mark.parametrize("value", ["ten", "-1", "2.5", "1e3", "\u00b2"])
def test_an_unreadable_limit_stops_the_app(name, value):
    with pytest.raises(SettingError) as info:
        Limits.from_env({name: value})
    assert str(info.value) == f"{name} must be a whole number of 0 or more, got {value!r}."


def test_each_client_gets_its_limit_per_sliding_hour():
    clock = Clock()
    budget = Budget(Limits(per_client_per_hour=3, per_day=100), clock)
    for minute in (0, 10, 20):
        clock.now = NOON + minute * 60
        budget.take("203.0.113.7")
    clock.now = NOON + 30 * 60
    message = refused(budget, "203.0.113.7")
    assert message.startswith("You have reached this server's limit of 3 GPT-4o requests per hour on its own "
                              "OpenAI key.")
    assert "The next one is possible in 30 min (at 13:00 UTC)." in message
    budget.take("198.51.100.2")  # another visitor is not affected

    clock.now = NOON + 3600  # the 12:00 request has left the window: one slot, then refused until 13:10
    budget.take("203.0.113.7")
    assert "possible in 10 min (at 13:10 UTC)" in refused(budget, "203.0.113.7")
    clock.now = NOON + 4200 - 30
    assert "possible in under a minute (at 13:10 UTC)" in refused(budget, "203.0.113.7")
    clock.now = NOON + 4200
    budget.take("203.0.113.7")


def test_the_daily_limit_is_shared_and_resets_at_midnight_utc():
    clock = Clock()
    budget = Budget(Limits(per_client_per_hour=10, per_day=4), clock)
    for i in range(4):
        budget.take(f"203.0.113.{i}")
    clock.now = NOON + 48 * 60
    message = refused(budget, "198.51.100.9")
    assert message.startswith("This server's daily limit of 4 GPT-4o requests on its own OpenAI key, shared by all "
                              "visitors, is used up.")
    assert "It resets at 00:00 UTC, in 11 h 12 min." in message
    clock.now = NOON + 11 * 3600
    assert "in 1 h." in refused(budget, "198.51.100.9")
    clock.now = NOON + 12 * 3600  # midnight
    for i in range(4):
        budget.take(f"198.51.100.{i}")
    refused(budget, "198.51.100.9")


@pytest.mark.parametrize("limits", [Limits(0, 200), Limits(10, 0)])
def test_a_limit_of_zero_lends_nothing(limits):
    message = refused(Budget(limits, Clock()), "203.0.113.7")
    assert message.startswith("This server does not lend its own OpenAI key for GPT-4o (its limit is 0).")


def test_refused_requests_are_not_kept():
    budget = Budget(Limits(per_client_per_hour=1, per_day=1), Clock())
    budget.take("203.0.113.1")
    for i in range(50):
        refused(budget, f"198.51.100.{i}")
    assert list(budget._recent) == ["203.0.113.1"]


@pytest.mark.parametrize("host, forwarded, proxies, expected", [
    ("203.0.113.7", None, 0, "203.0.113.7"),                      # a direct visitor
    ("203.0.113.7", "6.6.6.6", 0, "203.0.113.7"),                 # a remote peer: uvicorn ignored the header
    ("6.6.6.6", "6.6.6.6", 0, "unknown"),                         # a local relay (Gradio's MCP) passed on the text
    ("10.16.3.80", "6.6.6.6, 203.0.113.7", 1, "203.0.113.7"),     # behind one proxy: its entry, not the client's
    ("10.16.3.80", "203.0.113.7", 1, "203.0.113.7"),
    ("10.16.3.80", None, 1, "unknown"),                           # did not come through the proxy
    ("10.16.3.80", "6.6.6.6, 203.0.113.7, 10.0.0.2", 2, "203.0.113.7"),
    ("10.16.3.80", "not-an-address", 1, "unknown"),
    ("2001:db8:1:2:aaaa::1", None, 0, "2001:db8:1:2::/64"),       # one /64 is one visitor
    ("10.16.3.80", "2001:db8:1:2:ffff::9", 1, "2001:db8:1:2::/64"),
    (None, None, 0, "unknown"),
])
def test_client_id_is_an_address_the_visitor_cannot_choose(host, forwarded, proxies, expected):
    assert client_id(host, forwarded, proxies) == expected
