"""The PostgreSQL test plugin (pg_testing.py) keeps concurrent runs apart:
several engineers and CI jobs run the suite on one shared database."""

import pytest


@pytest.mark.postgresql
def test_ending_a_tests_connections_spares_everyone_elses(pg_url, pg_schemas):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as mine, \
            psycopg.connect(pg_schemas.url, autocommit=True) as bystander:  # another test's, another run's
        pg_schemas.end_connections(pg_url)
        with pytest.raises(psycopg.OperationalError):
            mine.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
