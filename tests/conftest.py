"""Where requirements.txt is not installed (no torch), the tests that need torch are skipped,
the pure-Python ones (the task, the statistics, the README) still run, and the summary says why."""
import importlib.util

TORCH_MISSING = importlib.util.find_spec("torch") is None


def pytest_terminal_summary(terminalreporter):
    if TORCH_MISSING:
        terminalreporter.write_line("torch is not installed, so most test files were skipped: "
                                    "pip install -r requirements.txt runs them (README, Set-up)", yellow=True)
