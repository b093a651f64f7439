"""``sprdiff codec-service start|status|stop``: codec servers kept warm across jobs (pipeline.codec_service)."""

from __future__ import annotations

import argparse
import json
import time


def add_service_commands(subparsers: argparse._SubParsersAction) -> None:
    service = subparsers.add_parser(
        "codec-service", help="keep codec servers warm on a Ray cluster for jobs to share",
        description="Start, show or stop a codec service: named codec servers on a long-running Ray cluster "
                    "that load their model once and code the batches of every encode-job and decode-job run "
                    "with --codec-service NAME, so those jobs import and load nothing before their first image.")
    actions = service.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start a service's servers and wait until each has loaded its model")
    start.add_argument("--name", required=True, help="the service's name, as jobs give it to --codec-service")
    start.add_argument("--model", default="demo", help="preset or shipped model, model directory or URI (default: "
                                                        "demo); encode jobs on the service must name the same weights")
    start.add_argument("--servers", type=int, default=1, help="codec servers, one model load each (default: 1)")
    start.add_argument("--gpus-per-server", type=float, default=0.0, help="GPUs per server (default: 0)")
    start.add_argument("--cpus-per-server", type=float, default=1.0, help="CPUs reserved per server (default: 1)")
    start.add_argument("--threads-per-server", type=int, default=None,
                       help="torch threads per server (default: one per reserved CPU)")
    start.add_argument("--device", default=None, help="torch device (default: cuda with GPUs, else cpu)")
    start.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder in each server")
    start.set_defaults(run=run_start)
    status = actions.add_parser("status", help="show running services, or one service's servers")
    status.add_argument("--name", default=None, help="one service (default: list them all)")
    status.set_defaults(run=run_status)
    stop = actions.add_parser("stop", help="stop a service's servers for good")
    stop.add_argument("--name", required=True)
    stop.set_defaults(run=run_stop)
    for action in (start, status, stop):
        action.add_argument("--address", required=True,
                            help="the Ray cluster's address (a service outlives this command, so it needs one)")


def _connect(args: argparse.Namespace):
    from pipeline import ray_runner

    return ray_runner.ray_session(args.address)


def _print_servers(heading: str, servers: list[dict]) -> None:
    print(heading)
    for server in servers:
        print(_line(server))


def _line(server: dict) -> str:
    calls, up = server["calls"], time.time() - server["started"]
    return (f"  server {server['index']}: model {server['model_id']} {server['fingerprint'][:16]} on "
            f"{server['device']} (pid {server['pid']} on {server['host']}), up {up:.0f} s, "
            f"{calls['encode']} encode and {calls['decode']} decode calls, {server['pending']} pending, "
            f"{server['models_loaded']} models loaded")


def run_start(args: argparse.Namespace) -> int:
    from pipeline import codec_service, ray_runner
    from pipeline.config import ComputeConfig

    compute = ComputeConfig(gpus_per_actor=args.gpus_per_server, cpus_per_actor=args.cpus_per_server,
                            threads_per_actor=args.threads_per_server, device=args.device, compile=args.compile)
    with _connect(args):
        t0 = time.monotonic()
        servers = codec_service.start_service(args.name, args.model, args.servers, compute,
                                              env={**ray_runner.MALLOC_ENV, **ray_runner.forwarded_env()})
        _print_servers(f"codec service {args.name!r}: {len(servers)} servers ready in {time.monotonic() - t0:.1f} s",
                       servers)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from pipeline import codec_service

    with _connect(args):
        if args.name is None:
            services = codec_service.list_services()
            print(json.dumps(services) if services else "no codec service runs on this cluster")
            return 0
        servers = codec_service.describe_service(args.name)
        if not servers:
            print(f"no codec service {args.name!r} runs on this cluster")
            return 1
        _print_servers(f"codec service {args.name!r}: {len(servers)} servers", servers)
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from pipeline import codec_service

    with _connect(args):
        stopped = codec_service.stop_service(args.name)
    print(f"codec service {args.name!r}: stopped {stopped} servers" if stopped else
          f"no codec service {args.name!r} runs on this cluster")
    return 0 if stopped else 1
