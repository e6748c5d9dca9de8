"""Command line: run, demo, check-config, once, wait.

Exit codes: 0 success; 1 ``wait`` ended in failed/cancelled/vanished (``once``: a target
failed); 2 usage error; 3 ``wait`` timed out; 78 invalid configuration, state file or listen
address; 128 + the signal's number when ``wait`` is interrupted while waiting (130 SIGINT,
143 SIGTERM: its reports are still written, the unfinished batches marked so); 130
interrupted (Ctrl-C) anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchscope import __version__
from batchscope.model import BATCH_ID_RULE, is_valid_batch_id
from batchscope.settings import (
    EX_CONFIG,
    Settings,
    SettingsError,
    load_settings,
    redacted_dict,
    secret_values,
)

if TYPE_CHECKING:
    from batchscope.runtime.reports import WaitReport

EXIT_OK, EXIT_BAD_OUTCOME, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
#: 128 + SIGINT, the shell convention: a Ctrl-C outside ``wait``'s waiting (which answers
#: 128 + the signal's number itself, its reports written).
EXIT_INTERRUPTED = 130


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="TOML settings file (default: $BATCHSCOPE_CONFIG)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["json", "console"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchscope",
        description="Watch Camunda 7 / Operaton / CIB seven batches and Datadog CI batches; "
                    "export their state changes as Prometheus metrics and JSON logs.",
    )
    parser.add_argument("--version", action="version", version=f"batchscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    _common(run)
    run.add_argument("--host", help="HTTP listen address (http.host)")
    run.add_argument("--port", type=int, help="HTTP port (http.port)")
    run.add_argument("--state-path", help="SQLite state file, or :memory:")
    run.add_argument("--reset-state", action="store_true",
                     help="start from an empty state file (discard an unusable one)")

    demo = sub.add_parser(
        "demo", help="run the daemon against a built-in simulator",
        description="The daemon against built-in simulators of both APIs. Reads http.*, "
                    "log_format and log_level from the same sources as run (flags win).")
    _common(demo)
    demo.add_argument("--port", type=int, help="HTTP port (http.port, default 9847)")
    demo.add_argument("--host", help="HTTP listen address (http.host, default 127.0.0.1)")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: run until Ctrl-C)")

    check = sub.add_parser("check-config", help="validate and print the effective settings")
    _common(check)

    once = sub.add_parser("once", help="poll every target once and print the batches")
    _common(once)
    once.add_argument("--json", action="store_true", help="print JSON instead of a table")

    _wait_parser(sub)
    return parser


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {value!r}")
    return seconds


def _wait_parser(sub: Any) -> None:
    wait = sub.add_parser(
        "wait", help="block until batches are terminal, or the engine is idle (CI gates)",
        description="Block until every BATCH_ID is terminal (for CI and deploy pipelines). "
                    "Progress on stderr (one line per change), final states on stdout "
                    "(one line per batch: id and state). Exit 0 all passed or skipped; 1 one "
                    "failed, was cancelled or vanished (Datadog non_blocking results never "
                    "fail the gate); 2 usage; 3 timed out; 130/143 interrupted by "
                    "SIGINT/SIGTERM (the reports still written). With --idle: block until "
                    "the engine has no runtime batch (of the --type types).")
    _common(wait)
    wait.add_argument("batch_ids", nargs="*", metavar="BATCH_ID")
    wait.add_argument("--source", choices=["engine", "datadog"], default=None,
                      help="datadog (default) or engine (the default with --idle)")
    wait.add_argument("--target", help="target name (default: the only one of that source)")
    wait.add_argument("--timeout", type=_seconds, default=3600.0, metavar="SECONDS",
                      help="give up after this many seconds, exit 3 (default 3600)")
    wait.add_argument("--idle", action="store_true",
                      help="engine: wait until no runtime batch is left (an upgrade gate)")
    wait.add_argument("--type", action="append", dest="types", default=[], metavar="TYPE",
                      help="with --idle: only batches of this type (repeatable)")
    wait.add_argument("--junit", metavar="PATH", help="write JUnit XML here")
    wait.add_argument("--json", metavar="PATH", dest="json_path",
                      help="write a JSON summary here")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {"log_level": "log_level", "log_format": "log_format", "host": "http.host",
               "port": "http.port", "state_path": "state_path"}
    return {key: getattr(args, attr) for attr, key in mapping.items()
            if getattr(args, attr, None) is not None}


def _load(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Settings:
    return load_settings(args.config, overrides={**_overrides(args), **(extra or {})})


def _setup_logging(settings: Settings, *, to_stderr: bool = False) -> None:
    """Logs go to stdout for the daemon; one-shot commands keep stdout for their output."""
    from batchscope.sinks.logs import configure_logging

    configure_logging(log_format=settings.log_format, level=settings.log_level,
                      secrets=secret_values(settings), stream=sys.stderr if to_stderr else None)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    sys.stdout.write(orjson.dumps(redacted_dict(settings),
                                  option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from batchscope.runtime.daemon import Daemon
    from batchscope.sinks.logs import register_secrets
    from batchscope.sinks.store import StateError, StateLocked

    settings = _load(args)
    _setup_logging(settings)

    current = [settings]

    def reload() -> Settings:
        new = _load(args)
        old = current[0]
        if (new.log_level, new.log_format) != (old.log_level, old.log_format):
            _setup_logging(new)  # applied live; the old secrets stay registered
            register_secrets(secret_values(old))
        register_secrets(secret_values(new))
        current[0] = new
        return new

    async def main() -> None:
        try:
            daemon = Daemon(settings, reset_state=args.reset_state, reload=reload)
        except StateLocked as exc:
            raise _ConfigExit(f"state file in use: {exc}") from exc
        except StateError as exc:
            hint = "" if args.reset_state else " (use --reset-state to start afresh)"
            raise _ConfigExit(f"unusable state file: {exc}{hint}") from exc
        await daemon.run_until_signalled()

    from batchscope.runtime.daemon import ListenError

    try:
        asyncio.run(main())
    except ListenError as exc:
        raise _listen_error(exc.error, settings.http.host, settings.http.port) from exc
    return EXIT_OK


class _ConfigExit(Exception):
    pass


def _listen_error(exc: OSError, host: str, port: int) -> _ConfigExit:
    return _ConfigExit(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def cmd_demo(args: argparse.Namespace) -> int:
    from batchscope.runtime.daemon import ListenError
    from batchscope.simulator.demo import run_demo

    user = _load(args)
    try:
        return asyncio.run(run_demo(user, duration=args.duration))
    except ListenError as exc:
        host = user.http.host if "host" in user.http.model_fields_set else "127.0.0.1"
        error = _listen_error(exc.error, host, user.http.port)
        raise _ConfigExit(
            f"{error}; pick another port: batchscope demo --port {user.http.port + 1} "
            f"(or BATCHSCOPE_HTTP__PORT={user.http.port + 1})") from exc


def _print_batches(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    header = f"{'SOURCE':8} {'TARGET':16} {'STATE':12} {'TYPE':28} BATCH_ID"
    print(header)
    for r in rows:
        print(f"{r['source']:8} {r['target']:16} {r['state']:12} {r['batch_type']:28} "
              f"{r['batch_id']}")


def cmd_once(args: argparse.Namespace) -> int:
    from batchscope.runtime.oneshot import poll_once

    settings = _load(args, {"state_path": ":memory:"})
    _setup_logging(settings, to_stderr=True)
    rows, failed = asyncio.run(poll_once(settings))
    _print_batches(rows, args.json)
    return EXIT_BAD_OUTCOME if failed else EXIT_OK


def _wait_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with a ``wait`` command line, if anything (exit 2)."""
    if args.idle:
        if args.source == "datadog":
            return "--idle is for --source engine (Datadog has no list of running batches)"
        if args.batch_ids:
            return "--idle waits for the whole engine: give no BATCH_ID"
    elif args.types:
        return "--type needs --idle"
    elif not args.batch_ids:
        return "give at least one BATCH_ID (or --source engine --idle)"
    for batch_id in args.batch_ids:
        if not is_valid_batch_id(batch_id):
            return f"batch id must {BATCH_ID_RULE}: {batch_id!r}"
    for path in (args.junit, args.json_path):
        problem = _unwritable(path)
        if problem:
            return problem
    return None


def _unwritable(path: str | None) -> str | None:
    """Why a report could not be written to ``path``: said before waiting, not after."""
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        return f"{path} is a directory"
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the directory of {path}: {exc.strerror or exc}"
    if not os.access(parent, os.W_OK):
        return f"cannot write to {parent}"
    return None


def _write(path: str, text: str) -> None:
    """Whole or not at all: a reporter never reads half a file."""
    from batchscope import redaction

    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(redaction.redact(text, tail=False), encoding="utf-8")
    os.replace(partial, target)


def _write_reports(args: argparse.Namespace, report: WaitReport) -> bool:
    """The --junit, --json and step-summary files; False when one could not be written."""
    from batchscope import redaction
    from batchscope.runtime import reports

    ok = True
    for path, render in ((args.junit, reports.junit_xml), (args.json_path, reports.json_summary)):
        if path is None:
            continue
        try:
            _write(path, render(report))
        except OSError as exc:
            print(f"batchscope wait: cannot write {path}: {exc.strerror or exc}",
                  file=sys.stderr)
            ok = False
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as out:
                out.write(redaction.redact(reports.markdown_summary(report), tail=False))
        except OSError as exc:  # cosmetic: the gate's answer does not depend on it
            print(f"batchscope wait: cannot append to $GITHUB_STEP_SUMMARY ({summary}): "
                  f"{exc.strerror or exc}", file=sys.stderr)
    return ok


def _print_outcome(report: WaitReport) -> None:
    """Final states on stdout, one line per batch; a one-line verdict on stderr."""
    from batchscope.runtime import reports

    if report.idle is not None:
        if report.idle.idle:
            print("idle")
        for b in report.batches if not report.idle.idle else ():
            print(f"{b.batch_id} {b.state}")
    else:
        for b in report.batches:
            print(f"{b.batch_id} {reports.shown_state(b)}")
    sys.stdout.flush()
    result = reports.outcome(report)
    verdicts = [reports.verdict(b) for b in report.batches]
    stopped = (f"interrupted by {report.interrupted} after {report.elapsed:.1f} s"
               if result == "interrupted" else
               f"timed out after {report.timeout_seconds:g} s")
    if report.idle is not None:
        line = ("idle" if report.idle.idle else
                f"{stopped}: not idle ({reports.left_text(report.idle)})")
    else:
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("passed", "failed", "pending")
                           if verdicts.count(v))
        line = {"passed": "passed", "failed": "failed"}.get(result, stopped)
        line += f" ({counts})"
        pending = [f"{b.batch_id} still {b.state}" for b in report.batches
                   if reports.verdict(b) == "pending"]
        if pending:
            line += ": " + ", ".join(pending)
        nb = sum(len(reports.non_blocking_failures(b)) for b in report.batches)
        if nb:
            line += f"; {nb} non_blocking result failures reported, not failing the gate"
    print(f"batchscope wait: {line}", file=sys.stderr)


def cmd_wait(args: argparse.Namespace) -> int:
    from batchscope.runtime import reports
    from batchscope.runtime.oneshot import Progress, wait_for_batches, wait_until_idle

    problem = _wait_usage(args)
    if problem is not None:
        print(f"batchscope wait: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # Progress lines replace the transition log lines; warnings (an upstream down, an
    # unknown status) are still logged unless --log-level asks for more or less.
    quiet = {} if args.log_level else {"log_level": "warning"}
    settings = _load(args, {"state_path": ":memory:", **quiet})
    _setup_logging(settings, to_stderr=True)
    deadline = time.monotonic() + args.timeout
    progress = Progress(sys.stderr)
    try:
        if args.idle:
            report = asyncio.run(wait_until_idle(
                settings, args.target, args.types, deadline, timeout_seconds=args.timeout,
                progress=progress))
        else:
            report = asyncio.run(wait_for_batches(
                settings, args.source or "datadog", args.target,
                list(dict.fromkeys(args.batch_ids)), deadline,
                timeout_seconds=args.timeout, progress=progress))
    except LookupError as exc:
        print(f"batchscope wait: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    with _stop_signals_ignored() if report.interrupted else contextlib.nullcontext():
        _print_outcome(report)
        if not _write_reports(args, report):
            return EXIT_USAGE
    return reports.exit_code(report)


@contextlib.contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    """A wait a signal stopped is already stopping: another SIGINT or SIGTERM (GitHub
    Actions sends SIGINT, then SIGTERM) while its reports are written changes nothing."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # not the main thread: no signal is ours to handle
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "check-config": cmd_check_config,
            "once": cmd_once, "wait": cmd_wait}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"batchscope: invalid configuration: {problem}", file=sys.stderr)
        return EX_CONFIG
    except _ConfigExit as exc:
        print(f"batchscope: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        # Never "success": `batchscope wait ID && deploy` must not deploy after a Ctrl-C.
        return EXIT_INTERRUPTED
