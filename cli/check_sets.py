"""The SES configuration sets `sesflow check` reads, and whether each exists.

A message is sent with SES_CONFIGURATION_SET (the default) unless it names another set of
SES_CONFIGURATION_SETS, so both are checked: the default first, then each listed set once. A set
that does not exist pauses the mail sent through it on its first send; a set without an SNS
destination for bounces and complaints (`cli.check_deliverability`) leaves the addresses it
bounces from never suppressed. One finding per set per check, each naming its set; with only the
default set (or none) the findings read as they always did.

Every function returns findings and never raises for what SES answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sesflow.cli.findings import Finding
from sesflow.common.aws import boto_client
from sesflow.common.settings import Settings

DEFAULT_SETTING = "SES_CONFIGURATION_SET"
LIST_SETTING = "SES_CONFIGURATION_SETS"
CHECK = "configuration set"


@dataclass(frozen=True, slots=True)
class CheckedSet:
    name: str  # "" when SES_CONFIGURATION_SET is not set
    default: bool  # SES_CONFIGURATION_SET, rather than only listed in SES_CONFIGURATION_SETS
    several: bool  # more than one set is checked: say which setting names this one

    @property
    def shown(self) -> str:
        """The name, and which setting names it when several sets are checked."""
        if not self.several:
            return self.name
        setting = f"the default, {DEFAULT_SETTING}" if self.default else LIST_SETTING
        return f"{self.name} ({setting})"


def checked_sets(settings: Settings) -> list[CheckedSet]:
    """The default set (name "" when there is none), then each other set a message may name."""
    default = settings.ses_configuration_set
    listed = [name for name in dict.fromkeys(settings.ses_configuration_sets) if name != default]
    several = bool(listed)
    return [CheckedSet(default, True, several)] + [CheckedSet(n, False, several) for n in listed]


def configuration_set_findings(settings: Settings) -> list[Finding]:
    """Whether each checked set exists: one GetConfigurationSet per set, one client for all."""
    sets = checked_sets(settings)
    ses = boto_client(settings, "sesv2", attempts=2) if any(s.name for s in sets) else None
    return [existence_finding(settings, ses, checked) for checked in sets]


def existence_finding(settings: Settings, ses: Any, checked: CheckedSet) -> Finding:
    from botocore.exceptions import BotoCoreError, ClientError

    name = checked.name
    if not name:
        return Finding(CHECK, "ok", f"none ({DEFAULT_SETTING} is not set)")
    try:
        ses.get_configuration_set(ConfigurationSetName=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NotFoundException":
            return missing_set(settings, checked)
        return Finding(CHECK, "warn", f"cannot ask SES about {name!r}: {exc}")
    except BotoCoreError as exc:
        return Finding(CHECK, "warn", f"cannot ask SES about {name!r}: {exc}")
    return Finding(CHECK, "ok", f"{checked.shown} exists")


def missing_set(settings: Settings, checked: CheckedSet) -> Finding:
    name = checked.name
    create = f"`aws sesv2 create-configuration-set --configuration-set-name {name}`"
    if checked.default:
        return Finding(
            CHECK,
            "fail",
            f"{DEFAULT_SETTING} {name!r} does not exist in SES ({settings.aws_region})",
            f"fix {DEFAULT_SETTING} (alias SES_CONFIG_SET), or create it: {create}",
        )
    return Finding(
        CHECK,
        "fail",
        f"{name!r} in {LIST_SETTING} does not exist in SES ({settings.aws_region}): messages "
        "that name it are paused at their first send",
        f"correct or remove {name} in {LIST_SETTING}, or create it: {create} (then give it an SNS "
        "event destination, see feedback)",
    )
