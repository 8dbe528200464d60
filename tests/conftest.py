"""Where requirements.txt is not installed (no torch), the tests that need torch are skipped,
the pure-Python ones (the task, the statistics, the README) still run, and the summary says why."""
import importlib.util
import signal

TORCH_MISSING = importlib.util.find_spec("torch") is None

# A shell that starts the tests in the background (`... &`) makes them ignore Ctrl-C, and the
# scripts they start would inherit that: hear it again, so that the Ctrl-C tests can send it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_terminal_summary(terminalreporter):
    if TORCH_MISSING:
        terminalreporter.write_line("torch is not installed, so most test files were skipped: "
                                    "pip install -r requirements.txt runs them (README, Set-up)", yellow=True)
