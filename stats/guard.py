"""The reputation guard's rules: when a topic's, or the whole account's, feedback should pause
bulk sending. Pure functions with no Redis in them (`stats.reputation` applies them).

A topic trips with reason `bounce_rate` when, after at least GUARD_MIN_SENT sent, its hard
bounces reach GUARD_BOUNCE_RATE of its sent mail; with `complaint_rate` when, after at least
GUARD_COMPLAINT_MIN_SENT sent, its complaints reach GUARD_COMPLAINT_RATE. The account trips on
the same rules over its last ACCOUNT_WINDOW_HOURS hourly buckets of every topic, at the higher
GUARD_ACCOUNT_* rates. Bounces are checked first, so they name a trip that both rules would.
A trip needs at least one bounce (or complaint): a zero minimum never pauses a clean topic.
Neither field holds feedback that says nothing about the sender (`stats.counters`): refusals
from SES's own suppression list are `bounced_suppressed`, `not-spam` reports
`complained_not_spam`, and the guard never reads them.

"Reach" is exact: the rates are compared as the decimal fractions they were written as, so 5
hard bounces of 100 sent trip a 0.05 limit (no float rounding either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from sesflow.common.pauses import Reason
from sesflow.common.settings import Settings
from sesflow.stats.counters import bucket_field, hour_of

# The counter fields the guard reads, in this order.
FIELDS = ("sent", "bounced_hard", "complained")
ACCOUNT_WINDOW_HOURS = 24


@dataclass(frozen=True, slots=True)
class Figures:
    sent: int = 0
    bounced_hard: int = 0
    complained: int = 0

    @classmethod
    def of(cls, values: list[int]) -> Figures:
        """From the FIELDS, in order."""
        return cls(*values)

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.sent + other.sent,
            self.bounced_hard + other.bounced_hard,
            self.complained + other.complained,
        )


@dataclass(frozen=True, slots=True)
class Rule:
    reason: Reason
    min_sent: int
    rate: Fraction

    def count(self, figures: Figures) -> int:
        return figures.bounced_hard if self.reason == "bounce_rate" else figures.complained

    def tripped(self, figures: Figures) -> bool:
        n = self.count(figures)
        return figures.sent >= self.min_sent and n > 0 and n >= self.rate * figures.sent


def _exact(rate: float) -> Fraction:
    return Fraction(repr(rate))


@dataclass(frozen=True, slots=True)
class Limits:
    bounce: Rule
    complaint: Rule

    @classmethod
    def for_topics(cls, settings: Settings) -> Limits:
        return cls(
            Rule("bounce_rate", settings.guard_min_sent, _exact(settings.guard_bounce_rate)),
            Rule(
                "complaint_rate",
                settings.guard_complaint_min_sent,
                _exact(settings.guard_complaint_rate),
            ),
        )

    @classmethod
    def for_account(cls, settings: Settings) -> Limits:
        """The account's rates, with the topics' minimums of sent mail."""
        return cls(
            Rule(
                "bounce_rate", settings.guard_min_sent, _exact(settings.guard_account_bounce_rate)
            ),
            Rule(
                "complaint_rate",
                settings.guard_complaint_min_sent,
                _exact(settings.guard_account_complaint_rate),
            ),
        )


@dataclass(frozen=True, slots=True)
class Trip:
    reason: Reason
    figures: dict[str, float]  # what the pause records and the dashboard shows


def judge(figures: Figures, limits: Limits) -> Trip | None:
    """The trip these figures call for, or None."""
    for rule in (limits.bounce, limits.complaint):
        if rule.tripped(figures):
            count = rule.count(figures)
            return Trip(
                rule.reason,
                {
                    "sent": figures.sent,
                    "bounced_hard": figures.bounced_hard,
                    "complained": figures.complained,
                    "rate": round(count / figures.sent, 6),
                    "threshold": float(rule.rate),
                    "min_sent": rule.min_sent,
                },
            )
    return None


def window_hours(now: float) -> list[str]:
    """The hourly buckets of the account's window: this hour and the ones before it."""
    return [hour_of(now - k * 3600) for k in range(ACCOUNT_WINDOW_HOURS)]


def hourly_fields(hours: list[str]) -> list[str]:
    """The hourly-hash fields of FIELDS over `hours`, field by field (see `sum_hourly`)."""
    return [bucket_field(name, hour) for name in FIELDS for hour in hours]


def sum_hourly(values: list[int], hours: int) -> Figures:
    """Figures from the values of `hourly_fields` (same order)."""
    return Figures.of([sum(values[i * hours : (i + 1) * hours]) for i in range(len(FIELDS))])
