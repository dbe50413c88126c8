"""Fixtures live in tests/fixtures/, one module per real part (CLI, DNS, MX, Postfix,
PostgreSQL, relay)."""

pytest_plugins = [
    "tests.fixtures.cli",
    "tests.fixtures.dns",
    "tests.fixtures.maillogs",
    "tests.fixtures.mx",
    "tests.fixtures.postfix",
    "tests.fixtures.postgres",
    "tests.fixtures.rawsmtp",
    "tests.fixtures.relay",
    "tests.fixtures.sink",
    "tests.fixtures.webhooks",
]
