"""Redis key names and channels shared by the API, the workers and the serving index."""

PREFIX = "unkd"
ACTIVE_MODEL = f"{PREFIX}:serving:active"  # JSON {"model_id", "bundle_dir", "published_at"}
SERVING_EVENTS = f"{PREFIX}:serving:events"  # pub/sub: the same JSON on every publish
PUBLISH_HISTORY = f"{PREFIX}:serving:history"  # list of PublishEntry JSON, newest first
PUBLISH_HISTORY_MAX = 1000  # older entries are trimmed
