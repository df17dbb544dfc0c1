# Runs the suite on PostgreSQL too when HEARTBEAT_LITE_TEST_PG is set (see pg_testing.py).
pytest_plugins = ["pg_testing"]
