"""Redis key names and channels shared by the API, the workers and the serving index.

Every key of service/ is built here, so one file tells what Redis holds:

    unkd:dataset:<id>  unkd:datasets            dataset records (sorted set: newest first)
    unkd:dataset:<root>:versions                a lineage's versions (score = version number)
    unkd:dataset:<root>:building                the lock of the one build of a lineage
    unkd:model:<id>    unkd:models              model records
    unkd:model:<id>:publishing                  the publish job holding the model's claim
    unkd:job:<id>      unkd:jobs                job records
    unkd:jobs:status:<status>, unkd:jobs:kind:<kind>   job indexes for filtered listing
    unkd:stats:jobs                             hash "<kind>:<status>" -> jobs that reached it
    unkd:serving:*                              the served model, its history, staged bundles,
                                                the running experiment (constants below)
    unkd:exposure:*                             live exposure counts (layout at EXPOSURE)
    unkd:events                                 the stream of user events (POST /v1/events)
    unkd:events:id:<event_id>                   an event id already stored (SET NX EX)
    unkd:rec:<rec_id>                           what one answer showed (rec_record)
    unkd:outcomes:*                             events attributed to answers (layout at OUTCOMES)
    unkd:pipeline:<name>  unkd:pipelines        pipeline recipes (sorted set: newest first)
    unkd:pipeline:<name>:runs                   a pipeline's run ids (sorted set: newest first)
    unkd:pipeline-run:<run id>                  one run's record
    unkd:pipeline-runs:open                     the ids of the runs queued or running (set)
    unkd:pipeline:<name>:{lock,fired,slot:<t>}  one run at a time, the schedule's last slot
"""

import hashlib

PREFIX = "unkd"

# -- the registry: datasets, models, jobs (service.core.registry) ----------------------------
DATASETS = f"{PREFIX}:datasets"  # sorted set of dataset ids, score = creation time
MODELS = f"{PREFIX}:models"  # sorted set of model ids, score = creation time
JOBS = f"{PREFIX}:jobs"  # sorted set of job ids, score = queued time
JOB_STATS = f"{PREFIX}:stats:jobs"  # hash "<kind>:<status>" -> jobs that ever reached it


def dataset(dataset_id: str) -> str:
    """The JSON DatasetRecord of `dataset_id`."""
    return f"{PREFIX}:dataset:{dataset_id}"


def dataset_versions(root_id: str) -> str:
    """Sorted set of the versions of the lineage rooted at `root_id` (score = version number;
    the root itself is not a member)."""
    return f"{dataset(root_id)}:versions"


def dataset_build_lock(root_id: str) -> str:
    """Held (SET NX PX, a token as value) while a version of `root_id`'s lineage is built."""
    return f"{dataset(root_id)}:building"


def model(model_id: str) -> str:
    """The JSON ModelRecord of `model_id`."""
    return f"{PREFIX}:model:{model_id}"


def publish_claim(model_id: str) -> str:
    """The id of the publish job building `model_id`'s bundle now (SET NX with a TTL)."""
    return f"{model(model_id)}:publishing"


def job(job_id: str) -> str:
    """The JSON JobRecord of `job_id`."""
    return f"{PREFIX}:job:{job_id}"


def jobs_by_status(status: str) -> str:
    """Sorted set of the jobs in `status` now."""
    return f"{PREFIX}:jobs:status:{status}"


def jobs_by_kind(kind: str) -> str:
    """Sorted set of the jobs of `kind`."""
    return f"{PREFIX}:jobs:kind:{kind}"


# -- live exposure: one family of keys per served model and serving epoch, under EXPOSURE -----
# (defined with the serving keys below, where its layout is drawn).


def exposure_epoch(model_id: str, since: str) -> str:
    """The prefix of one model's serving epoch: EXPOSURE:<model_id>:<hash of since>."""
    return f"{EXPOSURE}:{model_id}:{hashlib.sha1(since.encode()).hexdigest()[:12]}"


def exposure_bucket(epoch: str, bucket: int) -> str:
    """Hash of the counters of one 10-s bucket of an epoch."""
    return f"{epoch}:b:{bucket}"


def exposure_bucket_items(epoch: str, bucket: int) -> str:
    """Item counts of one 10-s bucket of an epoch."""
    return f"{epoch}:bi:{bucket}"


def exposure_total(epoch: str) -> str:
    """Hash of the counters since the epoch began."""
    return f"{epoch}:total"


def exposure_items(epoch: str) -> str:
    """Item counts since the epoch began."""
    return f"{epoch}:items"


def exposure_token(epoch: str, token: str) -> str:
    """Marker of one flushed delta of an epoch, set when Redis applies it: a retry of the same
    delta finds it and adds nothing (service.serving.exposure.delta)."""
    return f"{epoch}:t:{token}"


# -- serving: the pointer, its history, staged bundles, the experiment, exposure -------------
ACTIVE_MODEL = f"{PREFIX}:serving:active"  # JSON {"model_id", "bundle_dir", "published_at"}
SERVING_EVENTS = f"{PREFIX}:serving:events"  # pub/sub: the same JSON on every publish
PUBLISH_HISTORY = f"{PREFIX}:serving:history"  # list of PublishEntry JSON, newest first
PUBLISH_HISTORY_MAX = 1000  # older entries are trimmed
# Bundles built by a publish with "activate": false (hash model_id -> StagedBundle JSON): not
# served, there for an experiment arm.
STAGED_BUNDLES = f"{PREFIX}:serving:staged"
# The running A/B experiment: JSON of service.core.records.Experiment; absent when none runs.
EXPERIMENT = f"{PREFIX}:serving:experiment"
EXPERIMENT_EVENTS = f"{PREFIX}:serving:experiment:events"  # pub/sub: a hint to re-read EXPERIMENT
# Live exposure counts (service.serving.exposure), one family per served model and serving epoch:
#   <EXPOSURE>:<model_id>:<epoch>:b:<bucket>   hash of counters of one 10-s bucket (TTL ~ window)
#   <EXPOSURE>:<model_id>:<epoch>:bi:<bucket>  item counts of that bucket, dense big-endian u32
#   <EXPOSURE>:<model_id>:<epoch>:total        hash of counters since the epoch began
#   <EXPOSURE>:<model_id>:<epoch>:items        item counts since the epoch began
#   <EXPOSURE>:<model_id>:<epoch>:t:<token>    "1": one flushed delta applied (TTL 1 h)
EXPOSURE = f"{PREFIX}:exposure"


# -- events and their outcomes (service.serving.outcomes) -------------------------------------
# The one Redis Stream of user events (entry fields: event_id, user_id, item_id, type, ts,
# rec_id); POST /v1/events writes it, the outcome consumers read it as one consumer group.
EVENTS = f"{PREFIX}:events"
OUTCOME_GROUP = "unkd-outcomes"  # the consumer group of the API processes on EVENTS
# Events attributed to the answers that showed their item, per served model and epoch:
#   <OUTCOMES>:<model_id>:<epoch>:b:<bucket>   hash of counters of one 10-s bucket (TTL ~ window)
#   <OUTCOMES>:<model_id>:<epoch>:total        hash of counters since the epoch began
#   <OUTCOMES>:unattributed:{b:<bucket>,total} events no answer explains, by reason
#   <OUTCOMES>:test:<experiment hash>          the running minimum of the arms' always-valid p
OUTCOMES = f"{PREFIX}:outcomes"
REC = f"{PREFIX}:rec"


def events_stream() -> str:
    """The one Redis Stream of user events; entry fields are service.core.events.EVENT_FIELDS."""
    return EVENTS


def event_seen(event_id: str) -> str:
    """Present (with a TTL) while `event_id` counts as stored: a repeat within it is dropped."""
    return f"{EVENTS}:id:{event_id}"


def rec_record(rec_id: str) -> str:
    """Hash of one answer: user id ("" for a history) -> JSON of the list it was shown (TTL)."""
    return f"{REC}:{rec_id}"


def outcomes_epoch(model_id: str, since: str) -> str:
    """The prefix of one model's serving epoch's outcomes (the same epoch as its exposure)."""
    return f"{OUTCOMES}:{model_id}:{hashlib.sha1(since.encode()).hexdigest()[:12]}"


def outcomes_unattributed() -> str:
    """The prefix of the counters of events that no answer explains."""
    return f"{OUTCOMES}:unattributed"


def outcomes_bucket(epoch: str, bucket: int) -> str:
    """Hash of the outcome counters of one 10-s bucket of an epoch (or of `unattributed`)."""
    return f"{epoch}:b:{bucket}"


def outcomes_total(epoch: str) -> str:
    """Hash of the outcome counters since the epoch began."""
    return f"{epoch}:total"


def outcomes_test(experiment: str) -> str:
    """The smallest always-valid p-value an experiment's arms comparison has shown so far."""
    return f"{OUTCOMES}:test:{hashlib.sha1(experiment.encode()).hexdigest()[:12]}"


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


# -- pipelines (service.core.pipelines_store) --------------------------------------------------
PIPELINES = f"{PREFIX}:pipelines"  # sorted set of pipeline names, score = creation time
# The runs not ended yet, of every pipeline (deleted ones too): where the tick looks for a
# run whose worker died.
PIPELINE_RUNS_OPEN = f"{PREFIX}:pipeline-runs:open"


def pipeline(name: str) -> str:
    """The JSON PipelineRecipe of pipeline `name`."""
    return f"{PREFIX}:pipeline:{name}"


def pipeline_runs(name: str) -> str:
    """Sorted set of the run ids of pipeline `name`, score = when the run was created."""
    return f"{pipeline(name)}:runs"


def pipeline_run(run_id: str) -> str:
    """The JSON PipelineRun of `run_id`."""
    return f"{PREFIX}:pipeline-run:{run_id}"


def pipeline_lock(name: str) -> str:
    """The id of the one run of `name` queued or running now (SET NX; a TTL its heartbeat
    renews while it runs)."""
    return f"{pipeline(name)}:lock"


def pipeline_fired(name: str) -> str:
    """The time (epoch seconds) of the last schedule slot of `name` that was claimed."""
    return f"{pipeline(name)}:fired"


def pipeline_slot(name: str, slot: int) -> str:
    """Claimed (SET NX EX) by the one tick that starts the run of this slot (epoch seconds)."""
    return f"{pipeline(name)}:slot:{slot}"
