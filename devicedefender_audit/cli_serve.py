"""``serve``: the Device Defender API over HTTP for the unmodified boto3 ``iot`` client and AWS CLI.

Kept out of :mod:`.cli` so that other commands never import the server, botocore's protocol
classes or the service: :func:`add_serve_command` only declares arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devicedefender_audit.aws.clients import AwsTarget
    from devicedefender_audit.service import ServiceContext


def _port(text: str) -> int:
    """A TCP port, checked when parsed: a socket refuses one past 65535 with an OverflowError."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number in 0..65535 (0 picks a free one), not {text!r}")
    return value


def add_serve_command(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Declare ``serve`` on the CLI's subparsers; return its handler by command name."""
    from devicedefender_audit.cli import STORE_HELP, endpoint_url, region_name

    serve = sub.add_parser("serve", help="serve the Device Defender audit API over rest-json (boto3, AWS CLI)")
    serve.add_argument("--endpoint-url", type=endpoint_url, help="AWS IoT endpoint that the audits read and that every other iot "
                       "operation is forwarded to (default: AWS IoT in --region)")
    serve.add_argument("--region", type=region_name, help="default: the standard AWS chain")
    serve.add_argument("--profile", help="credentials the server runs with, verifies requests against and "
                       "forwards with")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="default 8080; 0 picks a free port")
    serve.add_argument("--store", default=None,  # a string: a Path collapses dynamodb:// and '' to '.'
                       help=STORE_HELP)
    serve.add_argument("--blocklists", type=Path, default=None, help="CVE-2008-0166 blocklist directory")
    serve.add_argument("--demo", action="store_true",
                       help="serve the embedded demo account (a seeded moto server; credentials demo/demo/demo)")
    serve.add_argument("--no-auth", action="store_true",
                       help="accept requests without verifying their SigV4 signature (loopback addresses only)")
    serve.add_argument("--own-credentials", action="store_true",
                       help="act with the server's own credentials instead of assuming the roleArn of the audit "
                       "configuration, the SNS notification target and each mitigation action (a local setup "
                       "without such roles)")
    serve.add_argument("--schedule-interval", type=float, default=60.0, metavar="SECONDS",
                       help="how often due scheduled audits are looked for (default 60)")
    serve.add_argument("--no-scheduler", action="store_true",
                       help="start no scheduled audits (run-due from cron or EventBridge does it)")
    return {"serve": cmd_serve}


def service_context(target: AwsTarget, store_path: Path | str, blocklists: Path | None,
                    assume_roles: bool = True) -> ServiceContext:
    """The context the server's operations share: audits run in the background (as the API's
    do), each in a thread with its own store connection; detectors are loaded once, when the
    first audit starts. With ``assume_roles`` the audit, the notifications and each mitigation
    action act as their configured role, as Device Defender does."""
    from devicedefender_audit.detectors import default_detectors
    from devicedefender_audit.service import ServiceContext
    from devicedefender_audit.store import StoreError, open_store, partition_region

    loaded: list[Any] = []
    lock = threading.Lock()

    def detectors() -> list[Any]:
        with lock:
            if not loaded:
                loaded.extend(default_detectors(blocklists))
            return loaded

    configured = target.region_name
    named = partition_region(store_path)
    if named is not None and named != configured:
        # One target reaches both the store and AWS IoT here: a partition is served in its region.
        raise StoreError(f"store {store_path} is region {named}'s partition; serve it with --region {named}")
    if not assume_roles:  # the server acts with these credentials: in their account
        from devicedefender_audit.cli import refuse_another_accounts_partition

        refuse_another_accounts_partition(str(store_path), target)
    # The store is checked against the region the server acts in here, and bound to it only once the
    # server listens (_bind_store); the fallback names ARNs only.
    return ServiceContext(store=open_store(store_path, target, configured, bind=False),
                          iot_client=lambda: target.client("iot"),
                          detectors=detectors, region=configured or "us-east-1", background=True,
                          open_worker_store=lambda: open_store(store_path, target),
                          sns_client=lambda: target.client("sns"),
                          role_client=target.client if assume_roles else None)


def _bind_store(ctx: ServiceContext, store_path: Path | str) -> None:
    """Bind the store to the region served (``ctx.region``: make_server refuses a server with
    none) once the server listens: a ``serve`` that cannot start (no credentials, a refused
    address, a port in use) binds nothing, as a ``run`` that cannot start binds nothing, so a
    failed start never locks a store to a region it never served."""
    from devicedefender_audit.store.region_binding import check_region

    check_region(ctx.store, ctx.region, str(store_path), True)


@contextmanager
def _target(args: argparse.Namespace) -> Iterator[AwsTarget]:
    if args.demo:
        from devicedefender_audit.demo import demo_account

        with demo_account() as target:
            yield target
        return
    from devicedefender_audit.aws.clients import AwsTarget

    yield AwsTarget(region=args.region, profile=args.profile, endpoint_url=args.endpoint_url)


class _Stopped(Exception):
    """SIGTERM, raised in the main thread (where the server serves) so that it stops as on SIGINT."""


def _stop_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM (systemd, docker stop, kill) stop ``serve`` as Ctrl-C does, once; return the
    function restoring the previous handler."""
    def stopped(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the shutdown short
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, stopped)
    return lambda: signal.signal(signal.SIGTERM, previous)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then cancel the audits and mitigation tasks still running
    and wait for them to record it; exit 0 then, 2 when the address may not or cannot be served."""
    from devicedefender_audit.server import make_server
    from devicedefender_audit.store import resolve_location

    store_path = resolve_location(args.store, args.demo)
    with _target(args) as target:
        ctx = service_context(target, store_path, args.blocklists, assume_roles=not args.own_credentials)
        try:
            server = make_server(target, ctx, args.host, args.port, authenticate=not args.no_auth,
                                 schedule_interval=None if args.no_scheduler else args.schedule_interval)
        except (ValueError, OSError) as exc:
            ctx.store.close()
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            _bind_store(ctx, store_path)
        except BaseException:
            server.server_close()
            ctx.store.close()
            raise
        restore = _stop_on_sigterm()  # before the line that tells a supervisor the server is up
        try:
            print(f"serving the Device Defender audit API on {server.url} (region {target.region_name}; other iot "
                  f"operations go to {server.forwarder.endpoint_url}; "
                  f"{'own credentials' if args.own_credentials else 'acting as the configured roles'}; "
                  f"{'no scheduler' if args.no_scheduler else f'scheduled audits checked every {args.schedule_interval:g} s'}"
                  ")", file=sys.stderr, flush=True)
            server.serve_forever()
        except (KeyboardInterrupt, _Stopped):
            pass
        finally:
            server.server_close()
            try:
                asked = server.stop_background_work()
                if asked:
                    print(f"stopped; canceled {', '.join(asked)}", file=sys.stderr, flush=True)
            finally:
                restore()
                ctx.store.close()
    return 0
