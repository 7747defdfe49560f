"""Limits for the hostile-input cases: a memory cap and a time limit around one case, and
the hashes of the files a case must leave unchanged."""
import contextlib
import hashlib
from pathlib import Path


class Overran(Exception):
    """A bounded block ran past its time limit."""


def _address_space():
    """This process's virtual memory size in bytes (VmSize), or None where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def bounded(memory=1 << 30, seconds=30):
    """Run the block with at most ``memory`` bytes of address space more than the process
    has now (resource.setrlimit RLIMIT_AS: an allocation past it is a MemoryError) and at
    most ``seconds`` of wall time (SIGALRM: Overran). Both are restored afterwards. Where
    the platform has neither, the block runs unbounded."""
    import resource
    import signal
    limits = resource.getrlimit(resource.RLIMIT_AS)
    now = _address_space()
    capped = now is not None and hasattr(signal, "SIGALRM")
    if capped:
        cap = now + memory
        if limits[1] != resource.RLIM_INFINITY:
            cap = min(cap, limits[1])
        resource.setrlimit(resource.RLIMIT_AS, (cap, limits[1]))

        def overran(signum, frame):
            raise Overran(f"the block ran past {seconds} s")

        previous = signal.signal(signal.SIGALRM, overran)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if capped:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            resource.setrlimit(resource.RLIMIT_AS, limits)


def file_hashes(folder):
    """{relative path: SHA-256} of every file under ``folder``: what a hostile case must
    leave unchanged."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
