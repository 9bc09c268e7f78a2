"""Proxy sign-in under a flood of wrong guesses: how long the event loop (every other
client's requests) stalls, with password checks in ProxyLogin's threads versus on the
loop as before #10.8; and how many guesses the failure limits let through to a check.

    ./dev bench bench_signin.py [--cost 12] [--addresses 12] [--per-address 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import tempfile
import time
from pathlib import Path

import bcrypt

from schoolgate.addons.identity import BadCredentials, HtpasswdBackend, ProxyLogin


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def loop_lag(stop: asyncio.Event) -> float:
    """The longest the loop went without running this task (a 5 ms tick)."""
    worst = 0.0
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        worst = max(worst, time.perf_counter() - before - 0.005)
    return worst


async def flood(backend: HtpasswdBackend, addresses: int, per_address: int, threaded: bool) -> tuple[float, float, int]:
    login = ProxyLogin()
    stop = asyncio.Event()
    lag = asyncio.create_task(loop_lag(stop))
    await asyncio.sleep(0.02)

    async def guess(ip: str, n: int) -> None:
        header = basic("teacher", f"guess {ip} {n}")
        try:
            if threaded:
                await login.verify(ip, header, [backend])
            else:  # as before: the hash checked on the event loop (other requests run between checks)
                await asyncio.sleep(0)
                login.checks += 1
                backend.check("teacher", f"guess {ip} {n}")
        except BadCredentials:
            pass

    started = time.perf_counter()
    await asyncio.gather(*(guess(f"10.9.{a // 250}.{a % 250}", n) for a in range(addresses) for n in range(per_address)))
    elapsed = time.perf_counter() - started
    stop.set()
    return await lag, elapsed, login.checks


async def limits(backend: HtpasswdBackend, guesses: int) -> int:
    login = ProxyLogin()
    for n in range(guesses):
        try:
            await login.verify("10.9.9.9", basic("teacher", f"guess {n}"), [backend])
        except BadCredentials:
            pass
    return login.checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost", type=int, default=12, help="bcrypt cost factor of the htpasswd file")
    parser.add_argument("--addresses", type=int, default=12)
    parser.add_argument("--per-address", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "users.htpasswd"
        path.write_text(f"teacher:{bcrypt.hashpw(b'right', bcrypt.gensalt(rounds=args.cost)).decode()}\n")
        backend = HtpasswdBackend(path)
        print(f"bcrypt cost {args.cost}; {args.addresses} addresses x {args.per_address} wrong guesses; "
              f"ProxyLogin with 2 threads")
        for threaded in (False, True):
            lag, elapsed, checks = asyncio.run(flood(backend, args.addresses, args.per_address, threaded))
            how = "threads (now)  " if threaded else "event loop (old)"
            print(f"  {how}: longest stall of every other request {lag * 1000:8.1f} ms; "
                  f"{checks} checks in {elapsed:.2f} s")
        checked = asyncio.run(limits(backend, 100))
        print(f"  100 wrong guesses from one address: {checked} checked, {100 - checked} refused without a check")


if __name__ == "__main__":
    main()
