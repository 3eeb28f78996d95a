"""Setup faults: SES refuses what every message sent with one setup would get (a configuration
set that does not exist, an unverified sender identity or MAIL FROM domain, an endpoint that is
not SES). Failing each recipient would fail a whole campaign in minutes for one typo, so sending
with that setup pauses instead, and nothing fails:

- a *scope* names the setup: `configuration-set:<name>` (a set that does not exist, or that SES
  paused), `tenant:<name>` (a paused SES tenant), `from:<address>` (identity and MAIL FROM
  faults), or `all` (a missing resource outside any configuration set, an endpoint that is not
  SES, SES out of reach for MAX_ATTEMPTS tries of one job). A job uses `all`, its configuration
  set, its tenant and its From address;
- the pause lives in Redis (`Keys.setup_paused`: scope -> JSON of the first fault), shared by
  every replica and kept across restarts. Each replica reads it every `REFRESH_INTERVAL_S`, and
  at once when it meets a fault itself;
- a job whose setup is paused takes no rate token. One job per paused scope and replica waits
  in its sender, to be the probe: its claim was released, its entry is kept fresh by the
  keep-alive (no delivery is counted, so MAX_ATTEMPTS never fails it), and it holds one
  concurrency slot. Every other job of that scope is *parked* (`sender.parking`): acknowledged
  and moved, in one script, to a list of the scope, so it holds no slot and no place in the
  pump's depth, and the messages of every other setup keep the full rate. When the scope
  resumes (or its pause is dropped) the parked jobs go back to their backlogs;
- every SETUP_PROBE_INTERVAL one job in the whole cluster is let through as the probe
  (`SET NX PX` on `Keys.setup_probe(scope)`): a real send. Sent -> the scope resumes for every
  replica; the same fault -> it waits again. Each fault renews `Keys.setup_seen(scope)`; a pause
  no fault renewed for `STALE_PROBES` intervals has no job left to probe it and is dropped;
- the first fault of a pause fires the alert: an error log line, a Sentry message,
  `sesflow_setup_faults_total{reason}`, `sesflow_setup_paused`, and `setup_faults` in the stats
  overview (a banner on the dashboard).
"""

from __future__ import annotations

import time

from sesflow.common.connection import Redis
from sesflow.common.errors import SesSetupFault
from sesflow.common.keys import Keys
from sesflow.common.logs import get_logger
from sesflow.common.setup_pauses import MESSAGE_BYTES, SetupPause, encode_pause, read_pauses
from sesflow.sender import metrics

log = get_logger(__name__)

ALL = "all"
REFRESH_INTERVAL_S = 1.0  # how soon a replica learns of another's pause or resume
# A pause no fault confirmed for this many probe intervals is dropped: no job uses that setup
# any more (the setting was fixed and the senders restarted, its campaign was cancelled), so
# no probe would ever lift it and the dashboard would show it for ever.
STALE_PROBES = 10


def address_of(from_email: str) -> str:
    """`Name <a@b>` or `a@b` -> `a@b`, lower-cased."""
    return from_email.rpartition("<")[2].rstrip(">").strip().lower()


def scopes_of(from_email: str, configuration_set: str, tenant: str = "") -> tuple[str, ...]:
    """Every setup a send with this From address, configuration set and tenant depends on."""
    scopes = [ALL, f"from:{address_of(from_email)}"]
    if configuration_set:
        scopes.append(f"configuration-set:{configuration_set}")
    if tenant:
        scopes.append(f"tenant:{tenant}")
    return tuple(scopes)


CONFIGURATION_SET_REASONS = frozenset({"configuration_set", "configuration_set_paused"})


def scope_of(
    fault: SesSetupFault, from_email: str, configuration_set: str, tenant: str = ""
) -> str:
    """The setup a fault blames, as narrowly as the answer allows."""
    if fault.reason in {"identity", "mail_from_domain"}:
        return f"from:{address_of(from_email)}"
    if fault.reason in CONFIGURATION_SET_REASONS and configuration_set:
        return f"configuration-set:{configuration_set}"
    if fault.reason == "tenant_paused" and tenant:
        return f"tenant:{tenant}"
    return ALL


def now_ms() -> int:
    return int(time.time() * 1000)


class SetupFaults:
    """One replica's view of the paused setups, and the operations on the shared state."""

    def __init__(self, client: Redis, keys: Keys, probe_interval: float, owner: str) -> None:
        self.client = client
        self.keys = keys
        self.probe_ms = max(1, int(probe_interval * 1000))
        self.stale_ms = STALE_PROBES * self.probe_ms
        self.owner = owner
        self.paused: dict[str, SetupPause] = {}
        self._next_try: dict[str, float] = {}

    def blocking(self, scopes: tuple[str, ...]) -> list[str]:
        """The scopes among `scopes` that are paused (as this replica last saw them)."""
        return [scope for scope in scopes if scope in self.paused]

    async def refresh(self) -> None:
        paused = await read_pauses(self.client, self.keys)
        if paused:
            pipe = self.client.pipeline(transaction=False)
            for scope in paused:
                pipe.exists(self.keys.setup_seen(scope))
            seen = await pipe.execute()
            for scope, fresh in zip(list(paused), seen, strict=True):
                if not fresh and await self.client.hdel(self.keys.setup_paused, scope):
                    del paused[scope]
                    log.warning(
                        "SES setup pause dropped: no fault for it lately (no job of it left?)",
                        scope=scope,
                    )
                elif not fresh:
                    del paused[scope]
        self.paused = paused
        metrics.SETUP_PAUSED.set(len(self.paused))

    async def record(self, scope: str, fault: SesSetupFault) -> SetupPause | None:
        """Pause `scope`; returns the pause when this call started it (the alert fires once per
        pause, not once per job that met it). The first probe comes an interval later."""
        pause = SetupPause(
            scope=scope,
            reason=fault.reason,
            code=fault.code,
            message=fault.message[:MESSAGE_BYTES],
            since_ms=now_ms(),
        )
        self.paused.setdefault(scope, pause)  # this replica stops at once, even without Redis
        # `seen` first: a refresh never finds the pause without it and drops it as stale
        await self.client.set(self.keys.setup_seen(scope), pause.since_ms, px=self.stale_ms)
        started = await self.client.hsetnx(self.keys.setup_paused, scope, encode_pause(pause))
        await self.client.set(self.keys.setup_probe(scope), self.owner, px=self.probe_ms, nx=True)
        metrics.SETUP_PAUSED.set(len(self.paused))
        return pause if started else None

    async def take_probe(self, scope: str) -> bool:
        """True for the one job in the cluster that may try `scope` now (once per interval). A
        replica asks Redis at most once a second per scope, whatever the number of its jobs."""
        now = time.monotonic()
        if now < self._next_try.get(scope, 0.0):
            return False
        self._next_try[scope] = now + min(REFRESH_INTERVAL_S, self.probe_ms / 1000)
        taken = await self.client.set(
            self.keys.setup_probe(scope), self.owner, px=self.probe_ms, nx=True
        )
        return bool(taken)

    async def resume(self, scopes: list[str]) -> list[str]:
        """A send with these setups went through: lift their pauses; returns those lifted."""
        lifted = []
        for scope in scopes:
            self.paused.pop(scope, None)
            if await self.client.hdel(self.keys.setup_paused, scope):
                lifted.append(scope)
        metrics.SETUP_PAUSED.set(len(self.paused))
        return lifted
