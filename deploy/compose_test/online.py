"""ONLINE LANE HOOK (issue 12): online requests through the compose stack, once they exist.

The online lane adds ``Client.infer`` and a ``torchfleet infer MODEL --input ... [--json]``
command. Until the producer image has that command, this step prints a note and is skipped;
once it has it, the step runs by itself: the CLI on the .npy batch, then ``jobs.py online``
(``Client.infer`` for each request, every answer checked as the Celery jobs' are). If the
lane's command line or answer differ from what is assumed here, change ONLINE_CLI and
``online`` in jobs.py: nothing else depends on them.
"""

from __future__ import annotations

from deploy.compose_test import commands as cmd
from deploy.compose_test.proc import say
from deploy.compose_test.scenario import MIN_ACCURACY, Run, expect, jobs_script, producer

PROBE = "docker compose run --rm producer torchfleet infer --help"
ONLINE_CLI = f"{cmd.WITH_JOBS} torchfleet infer digits --input /jobs/batch.npy --json"


def lane_available(run: Run) -> bool:
    done = run.compose(PROBE, check=False, quiet=True)
    return done.returncode == 0


def online(run: Run, count: int) -> str:
    """Online requests, or a note that the lane is not there; the summary's word for it."""
    if not lane_available(run):
        say("online lane: `torchfleet infer --help` fails in the producer image; skipped "
            "(the step switches itself on once the command exists)")  # fmt: skip
        return "skipped"
    answer = producer(run, ONLINE_CLI)  # {"answers": [{"input", "job_id", "result"}]}
    results = [a.get("result") or {} for a in answer.get("answers", [])]
    predicted = sum(len(r.get("predictions", [])) for r in results)
    expect(predicted == len(run.labels["batch"]), f"online: {answer}")
    report = jobs_script(run, "online", "--prefix", run.prefix("online"), "--count", str(count),
                         "--min-accuracy", str(MIN_ACCURACY))  # fmt: skip
    run.tally.online_sent += count + 1
    run.tally.online_answered += report.get("answered", 0) + 1
    say(f"online: {report}")
    expect(report["exit"] == 0, f"online: {report}")
    return f"{report['answered']}/{count}"
