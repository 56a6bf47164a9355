"""SignalSafeDataLoader: a worker pool still open when the program ends does not hang its exit."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, signal
    from monai_nasscam.data import SignalSafeDataLoader

    owner = os.getpid()
    # as ResumableCheckpointSaver's handler: workers (forked with it) ignore SIGTERM, the main process would stop
    signal.signal(signal.SIGTERM, lambda signum, frame: None if os.getpid() != owner else os._exit(3))
    stream = iter(SignalSafeDataLoader(list(range(64)), batch_size=2, num_workers=2))
    print(next(stream).tolist(), flush=True)  # the pool stays open, as the search's architecture stream does
    """
)


def test_open_worker_pool_does_not_hang_the_exit():
    # multiprocessing's exit hook sends SIGTERM to the workers and joins them: the workers ignore it, so without
    # this loader's own exit hook the join never returns
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[0, 1]"
