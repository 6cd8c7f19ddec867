"""Print the table of docs/reliability.md from what the reliability tests observed.

    .venv/bin/python -m pytest tests/reliability -v      # writes test-artifacts/reliability.json
    .venv/bin/python bench/reliability_report.py         # prints the Markdown table

Each row is one fault or attack, the test that injects it, and the figures that test
recorded: requests served and failed, jobs lost, and the result that matters for it.

Exit status: 0 when every expected row was run and recorded all its figures; 1 when the
artifact is missing, or when any row was not run (its test was skipped, deselected or
failed before recording) or lacks a figure. The table is printed either way, with those
rows marked, and stderr names them, so a partial run cannot pass for the whole table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "test-artifacts" / "reliability.json"

# (artifact key, test, how the observed result reads) in the order of the doc.
ROWS: list[tuple[str, str, str]] = [
    (
        "worker_sigkill_teacher",
        "test_worker_kill.py::test_killed_teacher_job_is_rerun_by_the_next_worker",
        "{final_status} after {attempts} attempts; {seconds_kill_to_restart}s from kill to restart; "
        "partial models seen {partial_model_sightings} in {registry_polls} polls",
    ),
    (
        "worker_sigkill_distill",
        "test_worker_kill.py::test_killed_distill_job_is_taken_over_by_a_standby_worker",
        "{final_status} after {attempts} attempts; {seconds_kill_to_restart}s from kill to restart; "
        "partial models seen {partial_model_sightings} in {registry_polls} polls",
    ),
    (
        "redis_kill_restart_freeze",
        "test_redis_outage.py::test_redis_killed_and_frozen_while_serving",
        "{served_while_killed} served while killed, {served_while_frozen} while frozen; registry answers "
        "{registry_answers_while_down} (slowest {slowest_503_s}s); recovered {seconds_to_recover}s after "
        "restart; records lost {records_lost}/{records_before}",
    ),
    (
        "publish_under_load",
        "test_publish.py::test_publish_under_load_fails_no_request",
        "{served_during_publish} served during the publish; answered by the old model after the swap: "
        "{answered_by_old_after_swap}; models seen {models_seen}",
    ),
    (
        "rollback_under_load",
        "test_rollback.py::test_publish_then_rollbacks_under_load_fail_no_request",
        "{swaps} swaps (publish + 3 rollbacks); answered by the replaced model after a swap: "
        "{answered_by_replaced_after_swap}; seconds to swap {seconds_to_swap}; models seen {models_seen}",
    ),
    (
        "api_workers_publish",
        "test_api_workers.py::test_a_publish_reaches_every_api_process_without_a_failed_request",
        "{processes} API processes (unkd api --workers); both serving the new model "
        "{seconds_to_all_processes}s after the publish; models seen {models_seen}",
    ),
    (
        "broken_bundles",
        "test_publish.py::test_broken_bundles_never_replace_the_serving_model",
        "{publishes_failed} publishes failed with the file named; pointer to a corrupt bundle refused: "
        "{pointer_refused}; models seen {models_seen}",
    ),
    (
        "failing_jobs",
        "test_failing_jobs.py::test_failing_jobs_leave_the_worker_up",
        "{jobs_failed_with_reason} failed with the reason, never retried; worker restarts {worker_restarts}; "
        "next job {next_job}",
    ),
    (
        "api_restart",
        "test_api_restart.py::test_api_restart_reports_ready_only_with_the_model_loaded",
        "ready without a model: {ready_without_model}; 503 while Redis down: {not_ready_503_while_redis_down}; "
        "ready {seconds_to_ready_after_redis}s after Redis returned",
    ),
    (
        "events_api_sigkill",
        "test_events_faults.py::test_api_sigkilled_while_a_client_streams_events",
        "{acknowledged} events acknowledged, {stored} stored; lost {lost}; stored twice {stored_twice} "
        "({client_retries} batches resent)",
    ),
    (
        "events_redis_restart",
        "test_events_faults.py::test_redis_restarted_while_a_client_streams_events",
        "{acknowledged} events acknowledged ({acknowledged_before_kill} before the kill); lost {lost}; "
        "stored twice {stored_twice}; refused while down {refusals}",
    ),
    (
        "fuzz_openapi",
        "test_fuzz_api.py::test_fuzz_every_operation_no_5xx_and_4xx_name_the_field",
        "{requests} requests over {operations} operations: statuses {statuses}; 5xx {server_errors}; "
        "4xx without the field {contract_violations}",
    ),
    (
        "versions_crash",
        "test_versions_crash.py::test_a_killed_build_neither_loses_nor_doubles_events",
        "{kills} builds SIGKILLed (at {steps}), then rerun: {positive_events} positive events of "
        "{events_sent} sent in the lineage; lost {lost}, doubled {doubled}",
    ),
    (
        "pipeline_worker_kill",
        "test_pipeline_faults.py::test_a_worker_killed_during_a_scheduled_run_fails_it_once",
        "a worker SIGKILLed in a scheduled run's teacher: the run failed once (worker lost), the "
        "next scheduled run published {recovered_s}s after the kill; {runs} runs in all",
    ),
    (
        "pipeline_two_schedulers",
        "test_pipeline_faults.py::test_two_schedulers_start_one_run_per_slot",
        "two schedulers and two workers: {runs} runs for {slots} schedule slots",
    ),
    (
        "upload_over_limit",
        "test_uploads.py::test_size_limit_is_enforced_while_streaming",
        "413 after {bytes_sent_before_413} bytes sent ({share_of_body_sent} of the body); "
        "declared length refused up front: {declared_length_refused}",
    ),
    (
        "bad_uploads",
        "test_uploads.py::test_bad_uploads_are_refused_naming_the_field",
        "{cases} cases answered {statuses}, 5xx {server_errors}, datasets registered {datasets_registered}",
    ),
    (
        "upload_million_users",
        "test_uploads.py::test_a_million_users_within_the_limit",
        "{status} in {seconds}s",
    ),
    (
        "odd_ids",
        "test_uploads.py::test_ids_with_unicode_and_separators_round_trip",
        "batch {batch_status} for all {ids} ids; single GET 200 for {get_ok} (ids with '/' use the batch); "
        "files outside the data root {escaped_files}",
    ),
    (
        "auth",
        "test_auth_and_bounds.py::test_mutating_endpoints_need_a_key_and_keys_never_reach_the_logs",
        "{routes} routes: accepted without a valid key {accepted_without_key}; key in logs {key_in_logs}; "
        "compare_digest calls per request {compare_digest_calls_per_request}",
    ),
    (
        "resource_bounds",
        "test_auth_and_bounds.py::test_resource_bounds_answer_4xx_naming_the_field",
        "{refused_with_field}/{cases} refused with the field named; 5xx {server_errors}",
    ),
]


def _what(figures: dict[str, Any]) -> str:
    return str(figures.get("fault") or figures.get("attack") or "")


def _num(figures: dict[str, Any], key: str) -> str:
    value = figures.get(key)
    return "–" if value is None else str(value)


def incomplete_rows(data: dict[str, Any]) -> list[str]:
    """'key (test): why' for every expected row that was not run or lacks a figure."""
    out = []
    for key, test, template in ROWS:
        figures = data.get(key)
        if not isinstance(figures, dict):
            out.append(f"{key} ({test}): not run")
            continue
        try:
            template.format(**figures)
        except KeyError as exc:
            out.append(f"{key} ({test}): artifact lacks {exc}")
    return out


def render(data: dict[str, Any]) -> str:
    lines = [
        "| Fault or attack | Test (tests/reliability/) | Served | Failed | Jobs lost | Observed |",
        "|---|---|---|---|---|---|",
    ]
    for key, test, template in ROWS:
        figures = data.get(key)
        if not isinstance(figures, dict):
            lines.append(f"| {key} | `{test}` | – | – | – | not run |")
            continue
        try:
            observed = template.format(**figures)
        except KeyError as exc:
            observed = f"(artifact lacks {exc})"
        lines.append(
            f"| {_what(figures)} | `{test}` | {_num(figures, 'requests_served')} | "
            f"{_num(figures, 'requests_failed')} | {_num(figures, 'jobs_lost')} | {observed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "artifact",
        nargs="?",
        type=Path,
        default=DEFAULT,
        help=f"what the reliability tests recorded (default: {DEFAULT.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    if not args.artifact.is_file():
        print(
            f"{args.artifact} not found: run `.venv/bin/python -m pytest tests/reliability` first",
            file=sys.stderr,
        )
        return 1
    data = json.loads(args.artifact.read_text())
    print(render(data))
    missing = incomplete_rows(data)
    if missing:
        print(
            f"{len(missing)} of {len(ROWS)} rows incomplete in {args.artifact}; run all of "
            "`.venv/bin/python -m pytest tests/reliability` and report again:",
            file=sys.stderr,
        )
        for line in missing:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
