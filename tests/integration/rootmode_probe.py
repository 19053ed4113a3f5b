"""Small programs the root-mode test runs inside its namespaces (``python rootmode_probe.py``).

- ``upstream HOST``: a fake upstream resolver on HOST:53 (UDP): every A query is answered
  with 192.0.2.1, so the test can tell a forwarded answer from the stub's own;
- ``query NAME [aaaa]``: ask the first nameserver of /etc/resolv.conf, print the answer;
- ``garbage``: send a malformed packet to that nameserver, print the reply's rcode;
- ``connect IP PORT``: connect and read, print how the connection ended;
- ``udpecho HOST PORT``: a UDP echo server (replies ``echo:`` + the datagram);
- ``udp IP PORT TEXT``: send one datagram, print the reply or how it failed.

Each command prints one JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from umbranet.agent import dnswire as dns

UPSTREAM_ANSWER = "192.0.2.1"


def nameserver() -> str:
    with open("/etc/resolv.conf") as handle:
        text = handle.read()
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["nameserver"]:
            return fields[1]
    raise SystemExit("no nameserver in /etc/resolv.conf")


def exchange(data: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(data, (nameserver(), 53))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def upstream(host: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 53))
        while True:
            data, source = sock.recvfrom(65535)
            try:
                query = dns.parse_message(data)
                name = query.questions[0].name
            except (dns.DnsError, IndexError):
                continue
            answers: tuple[dns.Record, ...] = ()
            if query.questions[0].qtype == dns.TYPE_A:
                answers = (dns.a_record(name, UPSTREAM_ANSWER, 60),)
            sock.sendto(dns.build_response(query, answers=answers, authoritative=False), source)


def query(name: str, kind: str = "a") -> dict[str, object]:
    qtype = dns.TYPE_AAAA if kind == "aaaa" else dns.TYPE_A
    ident = int.from_bytes(os.urandom(2), "big")
    reply = exchange(dns.build_query(ident, name, qtype))
    if reply is None:
        return {"timeout": True}
    message = dns.parse_message(reply)
    return {
        "id_ok": message.id == ident,
        "rcode": message.rcode,
        "answers": [socket.inet_ntoa(a.data) for a in message.answers if a.rtype == dns.TYPE_A],
    }


def garbage() -> dict[str, object]:
    reply = exchange(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xfe\xfd")
    return {"rcode": None if reply is None else reply[3] & 0xF}


def connect(ip: str, port: int) -> dict[str, object]:
    try:
        with socket.create_connection((ip, port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = conn.recv(100)
    except ConnectionResetError:
        return {"result": "reset"}
    except ConnectionRefusedError:
        return {"result": "refused"}
    except OSError as exc:
        return {"result": f"error: {exc}"}
    return {"result": "data" if data else "eof"}


def udpecho(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        while True:
            data, source = sock.recvfrom(65535)
            sock.sendto(b"echo:" + data, source)


def udp(ip: str, port: int, text: str) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect((ip, port))
            sock.send(text.encode())
            return {"result": "reply", "data": sock.recv(65535).decode()}
        except (ConnectionRefusedError, PermissionError):
            # Rejected in the output hook: send() fails at once (EPERM), or ICMP follows.
            return {"result": "refused"}
        except TimeoutError:
            return {"result": "timeout"}
        except OSError as exc:
            return {"result": f"error: {exc}"}


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "upstream":
        upstream(args[0])
        return
    if command == "udpecho":
        udpecho(args[0], int(args[1]))
        return
    if command == "query":
        result = query(*args)
    elif command == "garbage":
        result = garbage()
    elif command == "udp":
        result = udp(args[0], int(args[1]), args[2])
    else:
        result = connect(args[0], int(args[1]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
