"""Start-up time and peak memory of `schoolgate` commands.

Each command runs N times (default 5) in a fresh process; the median wall time and
the largest peak RSS (from wait4's rusage) are printed with the configuration.
Target: `--help` and `classify` of one URL under 0.3 s on an idle machine.

    .venv/bin/python bench/bench_cli.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHOOLGATE = Path(sys.executable).with_name("schoolgate")
REPO = Path(__file__).resolve().parents[1]


def run_once(argv: list[str], stdin: bytes, cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system: steadier on a busy machine) and peak RSS (KiB) of one run."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=cwd)
    assert process.stdin is not None
    process.stdin.write(stdin)
    process.stdin.close()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {process.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        (cwd / "policy.toml").write_text((REPO / "policy.toml").read_text())
        commands = [
            ("--help", [], b""),
            ("--version", [], b""),
            ("categories", [], b""),
            ("check", [], b""),
            ("classify (one URL, built-in list)", ["classify"], b"https://www.example.com/page\n"),
            ("explain (one URL)", ["explain", "https://www.example.com/"], b""),
            ("log --help", ["log", "--help"], b""),
        ]
        print(f"# schoolgate CLI start-up: {args.runs} runs each; Python {platform.python_version()}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        print(f"{'command':40} {'median s':>9} {'min s':>7} {'CPU s':>7} {'peak RSS MiB':>13}")
        for name, extra, stdin in commands:
            argv = [str(SCHOOLGATE), *(extra or name.split())]
            runs = [run_once(argv, stdin, cwd) for _ in range(args.runs)]
            times = [t for t, _, _ in runs]
            cpu = statistics.median(c for _, c, _ in runs)
            rss = max(r for _, _, r in runs) / 1024
            print(f"{name:40} {statistics.median(times):9.3f} {min(times):7.3f} {cpu:7.3f} {rss:13.1f}")


if __name__ == "__main__":
    main()
