"""Redis key names and channels shared by the API, the workers and the serving index."""

PREFIX = "unkd"
ACTIVE_MODEL = f"{PREFIX}:serving:active"  # JSON {"model_id", "bundle_dir", "published_at"}
SERVING_EVENTS = f"{PREFIX}:serving:events"  # pub/sub: the same JSON on every publish
