"""A command-line client of the REST API: `unkd jobs`, `unkd models`, `unkd recommend`.

It speaks HTTP only (httpx), so it imports nothing of the server: not the API, not
service.core, not training. It works against any unkd API it can reach, another host's or
another version's included, and the server stays the one place that validates a request.

    api.py       ApiClient: one typed method per route, errors as ApiError / ApiUnreachable
    bodies.py    request bodies from the flags, --body FILE and --set FIELD=VALUE
    output.py    tables, job summaries, the job progress bar, stdout/stderr lines
    commands.py  the argparse subcommands that service/cli.py registers
"""
