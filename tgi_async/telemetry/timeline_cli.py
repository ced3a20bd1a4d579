"""`tgi-async timeline TRACE_FILE... -o OUT.html`: a picture of a traced run (from `--otlp-file` exports)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("tgi_async.timeline")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "timeline",
        help="draw shard steps and request phases over time from OTLP JSON trace files (--otlp-file)",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument(
        "trace_files", nargs="+", metavar="TRACE_FILE", help="OTLP JSON lines (router and shard files)"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="output file: .html (interactive), .svg or .png"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tgi_async.logs import setup_logging
    from tgi_async.telemetry.otlp_json import TraceFileError, read_spans
    from tgi_async.telemetry.timeline import EmptyTraceError, build_timeline
    from tgi_async.telemetry.timeline_render import PngUnavailableError, render

    setup_logging()
    try:
        timeline = build_timeline(read_spans(args.trace_files))
        render(timeline, args.output)
    except (TraceFileError, EmptyTraceError, PngUnavailableError) as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot write %s: %s", args.output, exc.strerror or exc)
        return 2
    shards, requests = len(timeline.shard_lanes), len(timeline.request_lanes)
    print(f"{args.output}: {shards} shard lane(s), {requests} request(s), {len(timeline.stalls)} stall(s)")
    return 0
