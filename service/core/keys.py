"""Redis key names and channels shared by the API, the workers and the serving index."""

PREFIX = "unkd"
ACTIVE_MODEL = f"{PREFIX}:serving:active"  # JSON {"model_id", "bundle_dir", "published_at"}
SERVING_EVENTS = f"{PREFIX}:serving:events"  # pub/sub: the same JSON on every publish
PUBLISH_HISTORY = f"{PREFIX}:serving:history"  # list of PublishEntry JSON, newest first
PUBLISH_HISTORY_MAX = 1000  # older entries are trimmed
# Bundles built by a publish with "activate": false (hash model_id -> StagedBundle JSON): not
# served, there for an experiment arm.
STAGED_BUNDLES = f"{PREFIX}:serving:staged"
# The running A/B experiment: JSON of service.serving.schemas.Experiment; absent when none runs.
EXPERIMENT = f"{PREFIX}:serving:experiment"
EXPERIMENT_EVENTS = f"{PREFIX}:serving:experiment:events"  # pub/sub: a hint to re-read EXPERIMENT
# Live exposure counts (service.serving.exposure), one family per served model and serving epoch:
#   <EXPOSURE>:<model_id>:<epoch>:b:<bucket>   hash of counters of one 10-s bucket (TTL ~ window)
#   <EXPOSURE>:<model_id>:<epoch>:bi:<bucket>  item counts of that bucket, dense big-endian u32
#   <EXPOSURE>:<model_id>:<epoch>:total        hash of counters since the epoch began
#   <EXPOSURE>:<model_id>:<epoch>:items        item counts since the epoch began
EXPOSURE = f"{PREFIX}:exposure"


# -- worker: fan-out, leases, tuning --
def job_lease(holder: str) -> str:
    """Heartbeat lease of a running job (`holder` its id) or of one part of it: a tuning
    trial (`<job id>:trial-<n>`) or a fan-out shard (`<job id>:shard-<i>`)."""
    return f"{PREFIX}:job:{holder}:lease"


def reap_claim(job_id: str) -> str:
    """Taken by the one reaper that requeues a lost job (short TTL)."""
    return f"{job_lease(job_id)}:reap"


def fanout_shards(job_id: str, phase: str, what: str) -> str:
    """A fanned-out job's shard bookkeeping of one phase; `what` is `plan` (its plan.json for
    other hosts), `done` (set of the shards written anywhere), `starts` (hash shard -> rankings
    started) or `log` (list of "<shard> <worker>"). The candidates phase, the first one, has
    no phase in its keys."""
    tag = "" if phase == "candidates" else f":{phase}"
    return f"{PREFIX}:job:{job_id}{tag}:shards:{what}"


def tuning_study(job_id: str) -> str:
    """Prefix of a tuning job's Optuna journal (log_number, log:<n>, snapshot) and its lock."""
    return f"{PREFIX}:tune:{job_id}"


def tuning_lock(job_id: str) -> str:
    """The study's ask lock, held while a trial is asked for."""
    return f"{tuning_study(job_id)}:lock"


def fanout_shard_holder(job_id: str, phase: str, index: int) -> str:
    """Who ranks a fan-out shard holds `job_lease` of this (`<job id>:shard-<i>`, the
    candidates phase; `<job id>:<phase>-shard-<i>` the others)."""
    tag = "" if phase == "candidates" else f"{phase}-"
    return f"{job_id}:{tag}shard-{index}"
