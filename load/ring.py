"""The file the disk probes (syncfloor.py, synccpu.py) sync, shaped like the
daemon's write-ahead log: 8 MiB, written whole with zeros and synced first
(with its directory), then overwritten in a ring, so that no later sync has
a file size or a block allocation to persist."""
import os

SIZE = 8 << 20
BLOCK = b"x" * 4096


def open_ring(directory, name):
    """Creates DIRECTORY/NAME as above; returns its descriptor and path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for at in range(0, SIZE, 1 << 20):
            os.pwrite(fd, bytes(1 << 20), at)
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


def write_next(fd, offset):
    """Writes the next 4 KiB of the ring at OFFSET; returns the next offset."""
    os.pwrite(fd, BLOCK, offset)
    return (offset + len(BLOCK)) % SIZE
