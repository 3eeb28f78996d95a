"""A DNS server for tests: UDP on a free loopback port, answering TXT queries from a table, with
dnspython's own message parsing. `sesflow check --dns-server 127.0.0.1:PORT` reads DMARC records
from it, so no test asks the real DNS.

    with DnsResponder({"_dmarc.sesflow.test": ["v=DMARC1; p=reject"]}) as dns:
        ... dns.address ...      # "127.0.0.1:PORT"

A name in the table answers its TXT strings (several strings = several records); any other name
answers NXDOMAIN. `silent = True` drops every query unanswered (a resolver then times out);
`servfail = True` answers SERVFAIL. `queries` lists the names asked, in order.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TXT_CHUNK = 255  # one character-string of a TXT record holds at most 255 bytes


def txt_rdata(text: str) -> str:
    """`text` as the presentation form of one TXT record: quoted 255-byte strings."""
    chunks = [text[i : i + TXT_CHUNK] for i in range(0, len(text), TXT_CHUNK)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class DnsResponder:
    def __init__(self, records: dict[str, list[str]] | None = None) -> None:
        self.records = {self.key(name): list(v) for name, v in (records or {}).items()}
        self.silent = False
        self.servfail = False
        self.queries: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-responder", daemon=True)

    @staticmethod
    def key(name: str) -> str:
        return name.lower().rstrip(".")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, wire: bytes) -> bytes | None:
        """The response to one query, or None to leave it unanswered."""
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = self.key(question.name.to_text())
        self.queries.append(name)
        if self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            texts = [txt_rdata(t) for t in self.records[name]]
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, "TXT", texts)
            )
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(wire)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def start(self) -> DnsResponder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                raise RuntimeError("the DNS responder did not stop within 5 s")
        self._sock.close()

    def __enter__(self) -> DnsResponder:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
