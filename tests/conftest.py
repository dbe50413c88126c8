"""Fixtures live in tests/fixtures/, one module per real part (CLI, DNS, MX, Postfix,
PostgreSQL, Redis, relay)."""

pytest_plugins = [
    "tests.fixtures.cli",
    "tests.fixtures.dns",
    "tests.fixtures.maillogs",
    "tests.fixtures.mx",
    "tests.fixtures.postfix",
    "tests.fixtures.ratemx",
    "tests.fixtures.postgres",
    "tests.fixtures.rawsmtp",
    "tests.fixtures.redisd",
    "tests.fixtures.relay",
    "tests.fixtures.sink",
    "tests.fixtures.webhooks",
]
