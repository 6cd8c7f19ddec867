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
