"""Test infrastructure written once: real Redis, real worker and API processes.

- ``redis_dbs``: the session's one redis-server and its 16 databases (`RedisDatabases`);
  `kill_redis` / `resume_redis` for the fault tests.
- ``config``: `make_test_settings`, Settings with queue names no other test uses.
- ``processes``: the environment of a child (`settings_env(settings)`), stopping one, log tails.
- ``workers``: `WorkerProcess`, a real ``celery -A worker.celery_app worker`` (`celery_worker_argv`).
- ``live_api``: `LiveAPI`, ``uvicorn service.api.app:create_app --factory`` on a loopback port.
- ``s3``: `S3Server`, moto's standalone S3 server on loopback (`s3_server`, `s3_env` fixtures).
- ``fixtures``: the pytest fixtures over them, a plugin that tests/conftest.py loads for
  every suite, and the hook that adds process logs to the report of a failing test.
"""
