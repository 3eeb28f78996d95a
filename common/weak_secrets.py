"""Refuse secrets that protect nothing: placeholders copied from an example file, and short keys.

A tracking secret of `CHANGE_ME` lets anyone forge a click to any URL or an unsubscribe for any
address; an API key of `secret` opens the API to anyone who guesses it. Such a value is worse
than none (an unset TRACKING_SECRET is generated at random, an unset API_KEY is refused on a
public address), so every process refuses to start with it.
"""

from __future__ import annotations

import re

MIN_SECRET_BYTES = 16

# Compared after lower-casing and dropping everything but letters and digits, so `CHANGE_ME`,
# `change-me` and `<changeme>` are one placeholder.
PLACEHOLDERS = frozenset(
    {
        "changeme",
        "changethis",
        "replaceme",
        "secret",
        "secretkey",
        "mysecret",
        "yoursecret",
        "yoursecretkey",
        "yourapikey",
        "yourjwtsecret",
        "yourtrackingsecret",
        "apikey",
        "jwtsecret",
        "trackingsecret",
        "password",
        "passw0rd",
        "test",
        "testing",
        "example",
        "placeholder",
        "default",
        "todo",
        "xxx",
        "none",
        "null",
    }
)
# Words that mark a template value even inside a longer one (`CHANGE_ME_TO_A_LONG_RANDOM_KEY`).
PLACEHOLDER_WORDS = ("changeme", "replaceme", "changethis", "yoursecret", "placeholder")

UNSET_MEANS = {
    "TRACKING_SECRET": ", or leave TRACKING_SECRET empty to have one generated and kept in Redis",
    "API_KEY": ", or leave API_KEY empty to turn API keys off",
    "JWT_SECRET": ", or leave JWT_SECRET empty to turn bearer tokens off",
}

HOW_TO_GENERATE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _normal(value: str) -> str:
    return re.sub(r"[^a-z0-9]", "", value.lower())


def weakness(name: str, value: str) -> str | None:
    """Why `value` is not acceptable as the secret setting `name`, or None when it is (or unset).

    The value itself is never part of the answer, except a known placeholder."""
    if not value:
        return None
    normal = _normal(value)
    if normal in PLACEHOLDERS or any(word in normal for word in PLACEHOLDER_WORDS):
        hint = ""
        if normal == "yoursecretkey":
            hint = " (the older services' example value)"
        return (
            f"{name} is the placeholder {value.strip()!r}{hint}: set it to a random value of at "
            f"least {MIN_SECRET_BYTES} bytes, e.g. the output of `{HOW_TO_GENERATE}`"
            + UNSET_MEANS.get(name, "")
        )
    size = len(value.encode())
    if size < MIN_SECRET_BYTES:
        return (
            f"{name} is {size} bytes long; it must be at least {MIN_SECRET_BYTES} "
            f"(a random value, e.g. the output of `{HOW_TO_GENERATE}`)"
        )
    if len(set(value)) == 1:
        return f"{name} repeats a single character: set it to a random value"
    return None


# AWS keys are checked by AWS itself; these only catch a template copied as is (the older
# services' READMEs show `your_access_key` / `your_secret_key`), which would otherwise fail every
# send. Test doubles' keys such as `testing` stay accepted.
AWS_PLACEHOLDERS = frozenset(
    {"changeme", "youraccesskey", "youraccesskeyid", "yoursecretkey", "yoursecretaccesskey"}
)
SENTRY_DSN = re.compile(r"https?://[^@/\s]+@[^/\s]+/\S+")


def aws_placeholder(name: str, value: str) -> str | None:
    normal = _normal(value)
    if normal in AWS_PLACEHOLDERS or any(word in normal for word in PLACEHOLDER_WORDS):
        return (
            f"{name} is the placeholder {value.strip()!r}: set your AWS credentials, or leave "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY empty to use botocore's credential chain"
        )
    return None


def bad_sentry_dsn(value: str) -> str | None:
    if not value or SENTRY_DSN.fullmatch(value.strip()):
        return None
    return (
        "SENTRY_DSN is not a Sentry DSN (https://<key>@<host>/<project>; the older services' "
        "example `your_sentry_dsn` is not one): set your project's DSN or leave SENTRY_DSN empty"
    )
