"""A local SES endpoint for `sesflow up` with no AWS account: moto's server on loopback, with
the sender identity verified so that SendEmail succeeds. Nothing leaves the machine."""

from __future__ import annotations

from typing import Any

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sesflow-local",
    "AWS_SECRET_ACCESS_KEY": "sesflow-local",
}


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
