"""What the tests share besides fixtures (those are in conftest.py): the repository's paths and the child-process
setting of the tests that interrupt a command."""

import signal
from pathlib import Path

#: the repository checkout the tests run from
REPO = Path(__file__).resolve().parents[1]
#: the bundle's configs
CONFIGS = REPO / "bundle" / "configs"
#: small files the tests read (field examples, the standalone search.yaml of before the two-file form)
ASSETS = Path(__file__).resolve().parent / "assets"


def default_sigint() -> None:
    """``preexec_fn`` of a child process that a test interrupts with SIGINT.

    A shell that starts a job in the background (``cmd &``) sets SIGINT to ignored, and a child inherits that: Python
    then installs no ``KeyboardInterrupt`` handler and the signal does nothing. Restoring the default in the child lets
    the test send a Ctrl-C however pytest itself was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
