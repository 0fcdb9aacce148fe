import pytest

pytest_plugins = ["tests.testbed.fixtures"]


@pytest.fixture(scope="session")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for nix-instantiate with every Nix dir in a temporary directory."""
    from tests.helpers.nix import make_nix_env

    return make_nix_env(tmp_path_factory.mktemp("nix"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any test (in the controller only, before xdist starts its workers): take down the
    test beds of earlier runs that died without doing it themselves (``reap_dead_runs``)."""
    if hasattr(session.config, "workerinput"):
        return
    from tests.testbed.fixtures import reap_dead_runs

    for line in reap_dead_runs():
        print(f"\n{line}", flush=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Whatever needs the test bed (root, a network namespace, the PVE simulator, QEMU) is a `vm`
    test: `pytest -m "not vm"` is the fast lane of pure tests for the edit loop."""
    for item in items:
        if "testbed" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("vm"):
            item.add_marker(pytest.mark.vm)
    _heaviest_files_first(items)


def _heaviest_files_first(items: list[pytest.Item]) -> None:
    """Order the test files by their weight, heaviest first (a file's own order kept): the workers
    (``-n 2 --dist loadfile``) take files in this order, so the long VM files start at once and the
    pure ones fill the gaps at the end instead of one long file running alone. Weight: the file's
    seconds in ``tests/file-weights.json`` (``benchmarks/suite.py --write-weights`` measures them);
    a file not in it: 30 s per ``slow`` test, 5 s per other ``vm`` test. Deterministic, as xdist
    requires (every worker collects the same order)."""
    import json
    from pathlib import Path

    try:
        measured = json.loads((Path(__file__).parent / "file-weights.json").read_text())
    except (OSError, ValueError):
        measured = {}
    guessed: dict[str, float] = {}
    first: dict[str, int] = {}
    for n, item in enumerate(items):
        f = item.nodeid.split("::", 1)[0]
        first.setdefault(f, n)
        guessed[f] = guessed.get(f, 0) + (30 if item.get_closest_marker("slow") else
                                          5 if item.get_closest_marker("vm") else 0)

    def key(item: pytest.Item) -> tuple[float, int]:
        f = item.nodeid.split("::", 1)[0]
        return -float(measured.get(f, guessed[f])), first[f]

    items.sort(key=key)
