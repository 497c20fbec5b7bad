"""What the disk probes (syncfloor.py, synccpu.py, markcost.py, pagecost.py)
share: the file they write, shaped like the daemon's write-ahead log (8 MiB,
written whole with zeros a page at a time and synced first, with its
directory, then overwritten in a ring, so that no later sync has a file size
or a block allocation to persist), and the probe's own CPU time."""
import os
import resource

SIZE = 8 << 20
BLOCK = b"x" * 4096


def open_ring(directory, name, piece=4096):
    """Creates DIRECTORY/NAME as above; returns its descriptor and path.

    The zeros go in PIECE bytes at a time: a page, as the daemon creates its
    log, so the page cache holds the file in single pages (bigger pieces get
    large folios on recent kernels: pagecost.py)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        zeros = bytes(piece)
        for at in range(0, SIZE, piece):
            os.pwrite(fd, zeros, at)
        os.fsync(fd)
        dir_fd = os.open(directory, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except BaseException:
        # A full disk, say: leave no 8 MiB file behind.
        os.close(fd)
        os.remove(path)
        raise
    return fd, path


def own_cpu():
    """This process's CPU seconds so far (getrusage: user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_next(fd, offset):
    """Writes the next 4 KiB of the ring at OFFSET; returns the next offset."""
    os.pwrite(fd, BLOCK, offset)
    return (offset + len(BLOCK)) % SIZE
