"""The local token bucket: burst first, then the configured rate."""

from smtpguard.shaping.budget import LocalBudget


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_grants_its_burst_at_once() -> None:
    budget = LocalBudget(clock=_Clock())
    grants = [budget.take("site", rate=1.0, burst=5) for _ in range(5)]
    assert grants == [0.0] * 5


def test_an_empty_bucket_says_how_long_until_the_next_token() -> None:
    budget = LocalBudget(clock=_Clock())
    for _ in range(2):
        budget.take("site", rate=4.0, burst=2)
    assert budget.take("site", rate=4.0, burst=2) == 0.25


def test_refused_acquire_takes_no_token() -> None:
    clock = _Clock()
    budget = LocalBudget(clock=clock)
    budget.take("site", rate=2.0, burst=1)
    assert budget.take("site", rate=2.0, burst=1) > 0
    clock.now += 0.5
    assert budget.take("site", rate=2.0, burst=1) == 0.0


def test_sites_have_separate_buckets() -> None:
    budget = LocalBudget(clock=_Clock())
    budget.take("a", rate=1.0, burst=1)
    assert budget.take("b", rate=1.0, burst=1) == 0.0


async def test_acquire_is_the_same_bucket() -> None:
    budget = LocalBudget(clock=_Clock())
    assert await budget.acquire("site", 1.0, 1) == 0.0
    assert await budget.acquire("site", 1.0, 1) == 1.0
