"""A pytest plugin: `make test` must exercise everything, so a skipped test, an expected failure
(xfail, also when it passes) or a module skipped at collection fails the run instead of hiding a gap."""

import pytest


class SkipGuard:
    def __init__(self) -> None:
        self.not_run: list[str] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self.not_run.append(f"{report.nodeid} (skipped at collection)")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "wasxfail"):
            self.not_run.append(f"{report.nodeid} (xfail)")
        elif report.skipped:
            self.not_run.append(f"{report.nodeid} (skipped)")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.not_run and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.not_run:
            terminalreporter.write_line(
                f"FAILED: {len(self.not_run)} test(s) did not run as tests; every test must: "
                + ", ".join(self.not_run),
                red=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(), "kingfisher-skip-guard")
