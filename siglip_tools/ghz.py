"""ghz compatibility for the load driver (``siglip_tools.load``): options, configs, report.

Options and ``--config`` files take ghz's names and Go durations ("10s", "1m").

The JSON report uses ghz's field names and units (``ghz -O json``): durations are
integer nanoseconds, ``rps`` is calls per second, status names are Go's
``codes.Code`` spellings ("OK", "ResourceExhausted", "Canceled", ...), and error
messages read like grpc-go's ("rpc error: code = X desc = Y"). As in ghz, the
average covers every call, while fastest/slowest, the latency distribution and
the histogram cover the successful ones only.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import re
import sys
from array import array
from pathlib import Path
from typing import Any

import grpc

# grpc-go's codes.Code.String(): CamelCase, and "Canceled" with one L.
STATUS_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)

# ghz config keys (with "-" as "_") that the driver understands; LoadConfig fields,
# plus data-file/format/output, which the command line handles.
CONFIG_KEYS = (
    "call", "host", "insecure", "data", "data_file", "concurrency", "total", "duration",
    "max_duration", "duration_stop", "timeout", "connections", "connect_timeout", "rps",
    "format", "output", "lb_strategy", "metadata", "name", "cacert",
)  # fmt: skip
# Keys that only matter to ghz itself (it needs the schema; the driver has it compiled in).
_GHZ_ONLY = {"proto", "protoset", "import-paths", "cpus", "reflect-metadata", "debug", "tags"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | None) -> float:
    """Seconds from a Go duration ("10s", "1m30s", "250ms"); a bare number is seconds."""
    if value is None or isinstance(value, int | float):
        return float(value or 0)
    text = value.strip()
    try:
        return float(text or 0)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total, pos = total + float(m.group(1)) * _UNIT_S[m.group(2)], m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"invalid duration {value!r} (want e.g. 10s, 1m, 500ms)")
    return total


def read_ghz_config(path: str | Path) -> dict[str, Any]:
    """The keys of a ghz ``--config`` JSON file that the driver uses, as CONFIG_KEYS names."""
    values = {}
    for key, value in json.loads(Path(path).read_text()).items():
        attr = "rps" if key == "qps" else key.replace("-", "_")  # qps: older ghz's name
        if attr in CONFIG_KEYS:
            values[attr] = value
        elif key not in _GHZ_ONLY:
            print(f"warning: ignoring ghz option {key!r}", file=sys.stderr)
    return values


def ghz_arg_parser(description: str) -> argparse.ArgumentParser:
    """A parser of ghz's main command-line options, for the standalone load driver."""
    p = argparse.ArgumentParser(prog="siglip-gateway load", description=description)
    add_ghz_arguments(p)
    return p


def add_ghz_arguments(p: argparse.ArgumentParser) -> None:
    """ghz's main command-line options (every default None: a ``--config`` file may set them)."""
    a = p.add_argument
    a("host", nargs="?", help="HOST:PORT (any gRPC target, e.g. dns:///svc:50051)")
    a("--config", help="ghz JSON config file; command-line options override it")
    a("--call", help="siglip.v1.SiglipService/Classify, or just Classify")
    a("-d", "--data", help="request as protobuf-JSON (an array: one message per call/stream msg)")
    a("-D", "--data-file", help="file with the --data JSON (see loadtest/make_payloads.py)")
    a("-c", "--concurrency", type=int, help="concurrent workers (default 50)")
    a("-n", "--total", type=int, help="number of calls (default 200)")
    a("-z", "--duration", help="run this long instead of --total (10s, 1m)")
    a("-x", "--max-duration", help="stop after this long even if --total is not reached")
    a(
        "--duration-stop",
        choices=["close", "wait", "ignore"],
        help="calls in flight at the deadline: cancel and count (close, default), finish (wait), "
        "or cancel and drop (ignore)",
    )
    a("-r", "--rps", type=float, help="global rate limit in calls/s (0 = none)")
    a("-t", "--timeout", help="deadline of each call (default 20s, 0 = none)")
    a("--connections", type=int, help="channels (TCP connections) to spread workers on")
    a("--connect-timeout", help="initial connection timeout (default 10s)")
    a("--insecure", action=argparse.BooleanOptionalAction, help="plaintext (default: yes)")
    a("--cacert", help="PEM roots for TLS (with --no-insecure)")
    a("--lb-strategy", help="gRPC load-balancing policy, e.g. round_robin (with dns:/// targets)")
    a("-m", "--metadata", help="call metadata as a JSON object")
    a("-O", "--format", choices=["summary", "json", "pretty"], help="report format")
    a("-o", "--output", help="write the report here instead of stdout")
    a("--name", help="a name for the run, copied into the report")
    a("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def error_message(code: grpc.StatusCode | None, details: str | None) -> str:
    name = STATUS_NAMES.get(code, "Unknown") if code is not None else "Unknown"
    return f"rpc error: code = {name} desc = {details or ''}"


class Tally:
    """Per-call results; ``record`` is on the hot path, so it only appends and counts."""

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.latency_sum_ns = 0
        self.ok_latencies_ns = array("q")
        self.status_codes: dict[str, int] = {}
        self.error_messages: dict[str, int] = {}

    def record(self, latency_ns: int, status: str, error: str | None = None) -> None:
        self.count += 1
        self.latency_sum_ns += latency_ns
        self.status_codes[status] = self.status_codes.get(status, 0) + 1
        if error is None:
            self.ok_latencies_ns.append(latency_ns)
        else:
            self.errors += 1
            self.error_messages[error] = self.error_messages.get(error, 0) + 1


def _latency_distribution(ok_sorted: list[int]) -> list[dict[str, int]]:
    # ghz's rank rule: index floor(p% * n), one lower when that lands exactly.
    n = len(ok_sorted)
    out = []
    for p in PERCENTILES:
        rank = p / 100 * n
        idx = int(rank)
        if rank == idx:
            idx -= 1
        out.append({"percentage": p, "latency": ok_sorted[max(idx, 0)]})
    return out


def _histogram(ok_sorted: list[int], buckets: int = 10) -> list[dict[str, Any]]:
    fastest, slowest = ok_sorted[0], ok_sorted[-1]
    step = (slowest - fastest) / buckets
    marks = [fastest + step * i for i in range(buckets)] + [slowest]
    out, prev = [], 0
    for mark in marks:
        upto = bisect.bisect_right(ok_sorted, mark)
        count, prev = upto - prev, upto
        out.append({
            "mark": mark / 1e9,
            "count": count,
            "frequency": count / len(ok_sorted),
        })  # fmt: skip
    return out


def build_report(
    tally: Tally,
    total_ns: int,
    options: dict[str, Any],
    *,
    end_reason: str = "normal",
    name: str | None = None,
    date: dt.datetime | None = None,
) -> dict[str, Any]:
    """The ghz JSON report (minus per-call ``details``) as a JSON-ready dict."""
    when = date or dt.datetime.now(dt.timezone.utc).astimezone()
    ok_sorted = sorted(tally.ok_latencies_ns)
    report: dict[str, Any] = {}
    if name:
        report["name"] = name
    report |= {
        "endReason": end_reason,
        "options": options,
        "date": when.isoformat(timespec="seconds"),
        "count": tally.count,
        "total": total_ns,
        "average": tally.latency_sum_ns // tally.count if tally.count else 0,
        "fastest": ok_sorted[0] if ok_sorted else 0,
        "slowest": ok_sorted[-1] if ok_sorted else 0,
        "rps": tally.count / (total_ns / 1e9) if total_ns > 0 else 0.0,
        "errorDistribution": dict(tally.error_messages),
        "statusCodeDistribution": dict(tally.status_codes),
        "latencyDistribution": _latency_distribution(ok_sorted) if ok_sorted else [],
        "histogram": _histogram(ok_sorted) if ok_sorted else [],
    }
    return report


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


def format_summary(report: dict[str, Any]) -> str:
    """Human-readable report laid out like ghz's ``summary`` format."""
    lines = ["", "Summary:"]
    if report.get("name"):
        lines.append(f"  Name:\t{report['name']}")
    lines += [
        f"  Count:\t{report['count']}",
        f"  Total:\t{_ms(report['total'])}",
        f"  Slowest:\t{_ms(report['slowest'])}",
        f"  Fastest:\t{_ms(report['fastest'])}",
        f"  Average:\t{_ms(report['average'])}",
        f"  Requests/sec:\t{report['rps']:.2f}",
    ]
    hist = report["histogram"]
    if hist:
        peak = max(b["count"] for b in hist) or 1
        lines += ["", "Response time histogram:"]
        for b in hist:
            bar = "∎" * round(40 * b["count"] / peak)
            lines.append(f"  {b['mark'] * 1e3:10.3f} [{b['count']}]\t|{bar}")
    if report["latencyDistribution"]:
        lines += ["", "Latency distribution:"]
        for item in report["latencyDistribution"]:
            lines.append(f"  {item['percentage']} % in {_ms(item['latency'])}")
    lines += ["", "Status code distribution:"]
    for status, n in sorted(report["statusCodeDistribution"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  [{status}]\t{n} responses")
    if report["errorDistribution"]:
        lines += ["", "Error distribution:"]
        for msg, n in sorted(report["errorDistribution"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  [{n}]\t{msg}")
    return "\n".join(lines) + "\n"
