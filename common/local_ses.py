"""A local SES endpoint for `sesflow up` with no AWS account: moto's server on loopback, with
the sender identity verified so that SendEmail succeeds. Nothing leaves the machine."""

from __future__ import annotations

import logging
from typing import Any

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sesflow-local",
    "AWS_SECRET_ACCESS_KEY": "sesflow-local",
}


# What the local endpoint reports from GetSendQuota: an account out of the SES sandbox.
LOCAL_MAX_SEND_RATE = 1000
LOCAL_MAX_24H_SEND = 10_000_000


def production_quota() -> None:
    """moto reports a sandboxed account's quota (1/s, 200 a day), which would hold a local demo
    at one email a second and stop it after 200. The local endpoint stands for a production
    account instead; the server runs in this process, so this changes only what it answers."""
    from moto.ses import models

    base = models.SESQuota

    class ProductionQuota(base):  # type: ignore[misc, valid-type]
        def __init__(self, sent: int) -> None:
            super().__init__(sent)
            self.max_send_rate = LOCAL_MAX_SEND_RATE
            self.max24_hour_send = LOCAL_MAX_24H_SEND

    if base.__name__ != "ProductionQuota":
        models.SESQuota = ProductionQuota  # type: ignore[misc]


class LocalSes:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = "us-east-1") -> None:
        self.host = host
        self.port = port
        self.region = region
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, identities: list[str]) -> str:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the local SES endpoint needs moto: pip install 'sesflow[local]'"
            ) from exc
        production_quota()
        # The server logs every request; sesflow's own logs say what matters.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        self.verify(identities)
        return self.url

    def verify(self, identities: list[str]) -> None:
        """Verify each address and its domain, as a sandboxed SES account would require."""
        import boto3

        ses = boto3.client(
            "ses",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        for identity in identities:
            ses.verify_email_identity(EmailAddress=identity)
            if "@" in identity:
                ses.verify_domain_identity(Domain=identity.rsplit("@", 1)[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
