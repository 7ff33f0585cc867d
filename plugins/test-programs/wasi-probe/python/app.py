"""Test program: tries what a policy must not be able to do and reports each
outcome as a header on the upstream request — read a host file
(`x-probe-file`), list the environment (`x-probe-env`), open a TCP
connection (`x-probe-socket`) — plus what it may: the clock and random
numbers (`x-probe-clock`, `x-probe-random`)."""

import os
import random
import socket
import time

import wicket


def attempt(f):
    try:
        f()
        return "allowed"
    except Exception as e:  # the kind of refusal, for the test to read
        return "denied:" + type(e).__name__


class Probe(wicket.Policy):
    def request(self, req):
        def connect():
            socket.create_connection(("127.0.0.1", int(req.header("x-port") or "9")), timeout=1).close()

        return wicket.proceed(set_headers={
            "x-probe-file": attempt(lambda: open("/etc/hostname").read()),
            "x-probe-env": str(len(os.environ)),
            "x-probe-socket": attempt(connect),
            "x-probe-clock": "ok" if time.time() > 1_600_000_000 else "wrong",
            "x-probe-random": "ok" if random.random() != random.random() else "constant",
        })


WitWorld = wicket.export(Probe)
