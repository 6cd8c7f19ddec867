"""`unkd`: run the service (up, api, worker), the demo, and the offline training commands.

    unkd up [--host 127.0.0.1] [--port 8000] [--data-dir DIR]   Redis (if needed), worker, scheduler, API
    unkd api [--workers N]                                      the API alone (Docker, many hosts)
    unkd worker [-Q train,light]                                one Celery worker
    unkd scheduler                                              celery beat: the pipelines' tick
    unkd demo                                                   the whole story in ~3 minutes
    unkd data prepare | train-teacher | distill | evaluate      offline, no service needed
    unkd report MODEL_DIR [--compare DIR …] --out report.html   report / comparison page, offline
    unkd jobs | models | recommend | pipelines                  the REST API from a terminal (docs/cli.md)

Every command reads the same UNKD_* settings; flags override them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.core.config import Settings, get_settings

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _settings(args: argparse.Namespace) -> Settings:
    settings = get_settings()
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": Path(data_dir)})
    return settings


def cmd_up(args: argparse.Namespace) -> int:
    from service.stack.local import LocalStack

    settings = _settings(args)
    stack = LocalStack(settings, host=args.host, port=args.port, api_workers=args.api_workers)
    try:
        stack.start()
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    redis_note = (
        f"local redis-server on 127.0.0.1:{stack.redis.port} (data in {stack.redis.directory})"
        if stack.redis is not None
        else "UNKD_REDIS_URL"
    )
    print(f"unkd is up (data dir {stack.data_dir})")
    print(f"  API      {stack.api_url}/v1")
    print(f"  docs     {stack.api_url}/docs")
    print(f"  metrics  {stack.api_url}/metrics")
    print(f"  redis    {redis_note}")
    print(
        f"  worker   queues {settings.train_queue},{settings.light_queue}, "
        f"{stack.worker_threads} training thread(s) (pid {stack.worker.pid if stack.worker else '-'})"
    )
    print(
        f"  scheduler  pipelines' tick every {settings.pipeline_tick_s:g}s "
        f"(pid {stack.scheduler.pid if stack.scheduler else '-'})"
    )
    print("Ctrl-C stops everything.", flush=True)
    reason = stack.wait()
    print(f"stopping ({reason}) ...", flush=True)
    stack.stop()
    print("stopped.")
    return 0 if reason in ("SIGINT", "SIGTERM") else 1


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings(args)
    exposure = settings.exposure_error(args.host)
    if exposure:  # secure by default: no open API beyond loopback unless asked for
        print(f"error: {exposure}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print(
            "error: UNKD_REDIS_URL is not set (the API needs Redis; `unkd up` starts one)",
            file=sys.stderr,
        )
        return 2
    common = {
        "host": args.host,
        "port": args.port,
        "log_level": settings.log_level.lower(),
        "proxy_headers": True,
    }
    if args.workers == 1:
        from service.api.app import create_app

        uvicorn.run(create_app(settings), **common)
        return 0
    # Several processes on one socket (uvicorn's supervisor restarts one that dies): each
    # builds its app from UNKD_* and loads its own copy of the served bundle; they share
    # Redis (jobs, registry, exposure counters), so any of them answers any request.
    import os

    from service.core.config import settings_env

    os.environ.update(settings_env(settings))
    uvicorn.run("service.api.app:create_app", factory=True, workers=args.workers, **common)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.redis_url:
        print(
            "error: UNKD_REDIS_URL is not set (the worker needs the stack's Redis)", file=sys.stderr
        )
        return 2
    import os

    from service.core.config import settings_env
    from service.stack.local import celery_worker_argv

    queues = args.queues or f"{settings.train_queue},{settings.light_queue}"
    argv = celery_worker_argv(
        queues,
        hostname=args.hostname or "celery@%h",
        loglevel=settings.log_level,
        pool=args.pool,
        concurrency=args.concurrency,
        alone=False,
    )
    # The worker is its own entry point (worker.celery_app): replace this process with it.
    os.execve(argv[0], argv, worker_env(dict(os.environ), settings_env(settings), args.threads))


def cmd_scheduler(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.redis_url:
        print(
            "error: UNKD_REDIS_URL is not set (the scheduler needs the stack's Redis)",
            file=sys.stderr,
        )
        return 2
    import os

    from service.core.config import settings_env
    from service.stack.local import celery_beat_argv

    schedule = Path(args.schedule) if args.schedule else settings.data_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    argv = celery_beat_argv(schedule, loglevel=settings.log_level)
    # beat is its own entry point (worker.celery_app's beat_schedule): replace this process.
    os.execve(argv[0], argv, {**os.environ, **settings_env(settings)})


def worker_env(
    environ: dict[str, str], settings: dict[str, str], threads: int | None
) -> dict[str, str]:
    """The worker's environment: the settings as UNKD_*, and the threads of its training jobs
    (service.stack.local.training_threads_env: `threads`, or every core it may use, with
    OpenMP's passive wait). Several workers on one host each take cores / workers: with
    every worker on all cores, two on 2 cores ran a training epoch 3x slower (docs/tuning.md)."""
    from service.stack.local import training_threads_env

    return training_threads_env({**environ, **settings}, threads)


def cmd_demo(args: argparse.Namespace) -> int:
    from service.stack.demo import run_demo

    return run_demo(_settings(args), data_dir=args.data_dir, port=args.port, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unkd",
        description="UnKD distillation service: REST jobs, Celery workers, FAISS serving.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start Redis (if UNKD_REDIS_URL is unset), a worker and the API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", help="datasets, models, bundles, local Redis (UNKD_DATA_DIR)")
    p.add_argument(
        "--api-workers", type=_positive, default=1, help="API processes (as unkd api --workers)"
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("api", help="run the API alone (uvicorn), against UNKD_REDIS_URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="API processes on the port "
        "(one per core; each holds the served bundle: docs/service.md)",
    )
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run one Celery worker, against UNKD_REDIS_URL")
    p.add_argument(
        "-Q", "--queues", help="comma-separated (default: UNKD_TRAIN_QUEUE,UNKD_LIGHT_QUEUE)"
    )
    p.add_argument(
        "--pool", default="solo", help="solo (one job at a time, GPU-safe) | prefork | threads"
    )
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--hostname", help="Celery node name, e.g. gpu0@%%h")
    p.add_argument(
        "--threads",
        type=_positive,
        help="threads per training job (OMP_NUM_THREADS); "
        "N workers on C cores: C/N each (default: the cores this process may use)",
    )
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "scheduler",
        help="run celery beat (the pipelines' tick every UNKD_PIPELINE_TICK_S), against "
        "UNKD_REDIS_URL; two are safe (one run per slot)",
    )
    p.add_argument("--schedule", help="beat's state file (default: DATA_DIR/celerybeat-schedule)")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser(
        "demo", help="local stack, synthetic data, teacher, 3 students, publish, compare"
    )
    p.add_argument("--data-dir", help="keep everything here (default: a temporary directory)")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    p.set_defaults(func=cmd_demo)

    from training.cli import register  # light: heavy imports happen inside its handlers

    register(sub)
    from service.reports.cli import register as register_report  # light: no torch, no web stack

    register_report(sub)
    from service.client.commands import register as register_client  # the API over HTTP: httpx only

    register_client(sub)
    from service.client.pipelines import register as register_pipelines  # httpx only

    register_pipelines(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO
        if args.command in ("up", "api", "worker", "scheduler")
        else logging.WARNING,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
