# ferry's helper for hosts where ferry is not installed.
#
# The agent sends this file over an SSH exec channel to a python3 that the
# remote host already has (`python3`, or RHEL 8's /usr/libexec/platform-python),
# and then speaks the helper protocol of @ferry/core (protocol.ts) with it on
# stdin/stdout, exactly as with `ferry serve`: a 12-byte header
# (u8 type | u8 flags | u16 reserved | u32 id | u32 length, big-endian), msgpack
# bodies for control frames, raw bytes for DATA. It pwrites ranges at their
# offsets, hashes what it received (crc32 or sha256: what Python computes
# natively; no xxh3), streams ranges it is asked to read, and touches only the
# files it was asked to OPEN (writes go by handle, within the size the file had
# at OPEN).
#
# The main thread reads frames and hashes what arrives; a writer thread
# pwrites it. A WRITE is answered once its bytes are in and hashed, as
# `ferry serve` does, so a stream runs on while the disk flushes; FSYNC waits
# for the file's writes and fails if one did, so nothing unwritten is ever
# counted durable. The writes waiting are bounded (PENDING_BYTES): when they
# are all taken, the main thread stops reading, and sshd's pipe and the SSH
# window hold the sender. Errors are sent as {code, message, path, errno};
# the client words the message (core's destinationError / sourceError), so
# the texts live in one place.
#
# Python 3.6 or later (RHEL 8's platform-python is 3.6): no walrus operator,
# no dataclasses, os.preadv only where it exists.
import errno as errno_names
import fcntl
import grp
import mmap
import os
import pwd
import stat as stat_mod
import struct
import sys
import threading
import time
import zlib
# hashlib, re, fnmatch and concurrent.futures are imported where they are used: together
# they were ~30 ms of every start, and most sessions need none of them (or need them later).

if sys.version_info < (3, 6):
    sys.stderr.write('ferry: the remote python is %d.%d; the helper needs 3.6 or later\n' % sys.version_info[:2])
    sys.exit(127)

PROTOCOL_VERSION = 1
SOFTWARE = 'ferry-python/1 (Python %d.%d.%d)' % sys.version_info[:3]
HEADER = struct.Struct('>BBHII')
HEADER_BYTES = 12
MAX_CONTROL_BYTES = 64 * 1024
MAX_DATA_FRAME_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
PIPE_BYTES = 1024 * 1024
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
# Bytes of pwrites that may wait for the disk: ~0.3 s of a fast stream, the length of a flush.
PENDING_BYTES = 64 * 1024 * 1024
# O_DIRECT writes: position and length in whole pages, from page-aligned buffers (mmap's).
DIRECT_ALIGNMENT = 4096
# File systems written around the page cache by default (OPEN direct 'auto'): local disk ones,
# as core's LOCAL_DISK_FILESYSTEM_NAMES (direct.ts) says and why.
LOCAL_DISK_FILESYSTEMS = ('ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'f2fs')

HELLO, OPEN, WRITE, DATA, READ, HASH, FSYNC, SETSTAT, CLOSE, STAT, RENAME, UNLINK, ZEROS, BATCH, COMMIT, WALK, READ_BATCH, ENTRIES, GLOB, COPY_RANGE = range(1, 21)
OK, ERROR = 64, 65
NAMES = {1: 'HELLO', 2: 'OPEN', 3: 'WRITE', 4: 'DATA', 5: 'READ', 6: 'HASH', 7: 'FSYNC', 8: 'SETSTAT',
         9: 'CLOSE', 10: 'STAT', 11: 'RENAME', 12: 'UNLINK', 13: 'ZEROS', 14: 'BATCH', 15: 'COMMIT',
         16: 'WALK', 17: 'READ_BATCH', 18: 'ENTRIES', 19: 'GLOB', 20: 'COPY_RANGE', 64: 'OK', 65: 'ERROR'}
# WALK's items go out in ENTRIES frames of at most this many, this many bytes, or after this long (s).
WALK_CHUNK_ITEMS = 1024
WALK_CHUNK_BYTES = 256 * 1024
WALK_CHUNK_SECONDS = 0.1
# BATCH (core's protocol.ts): its body and COMMIT's may be this large; entries, bytes and open batches are bounded.
MAX_BATCH_BODY_BYTES = 1024 * 1024
MAX_BATCH_ENTRIES = 4096
MAX_BATCH_BYTES = 1024 * 1024 * 1024
MAX_OPEN_BATCHES = 4
# Written files of one batch held open for the batch's sync; past this, they are synced and closed early.
MAX_BATCH_OPEN_FILES = 256
# Threads that fdatasync files and fsync directories: even after a syncfs each one flushes the disk's
# cache, and several at once share flushes (serve's batch.ts says what that saves).
SYNC_THREADS = 16
# coreutils' sync, which does syncfs(2) with -f (coreutils 8.24 and later): one write-back for a whole batch.
SYNC_PROGRAM = next((p for p in ('/usr/bin/sync', '/bin/sync') if os.path.exists(p)), None)


def libc_syncfs():
    """The C library's syncfs(2) through ctypes (a batch's groups are synced without a process each); None where ctypes or the call is missing."""
    try:
        import ctypes
        call = ctypes.CDLL(None, use_errno=True).syncfs
        call.argtypes = [ctypes.c_int]
        call.restype = ctypes.c_int
        return call
    except (ImportError, OSError, AttributeError):
        return None
BATCH_KINDS = ('dir', 'file', 'symlink', 'hardlink')
ENTRY_KEYS = ('kind', 'path', 'size', 'mode', 'mtimeMs', 'atimeMs', 'target', 'uid', 'gid', 'user', 'group', 'xattrs')
# Owners and extended attributes (core's tree-meta.ts): bounds of one entry's, and which names travel.
MAX_XATTRS_PER_ENTRY = 128
MAX_XATTR_BYTES_PER_ENTRY = 256 * 1024
MAX_XATTR_VALUE_BYTES = 64 * 1024
ACL_XATTRS = ('system.posix_acl_access', 'system.posix_acl_default')
MAX_GLOB_MATCHES = 4096
ZERO_CHUNK = bytes(CHUNK_BYTES)
# The umask files are created with here: what a copied file's mode is limited by (HELLO says it).
UMASK = os.umask(0o077)
os.umask(UMASK)


class Failure(Exception):
    """
    An error that travels to the client as an ERROR frame. A PROTOCOL failure
    ends the session (the client broke the protocol) unless `fatal` is False.
    """

    def __init__(self, code, message, path=None, errno=None, fatal=None):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.path = path
        self.errno = errno
        self.fatal = code == 'PROTOCOL' if fatal is None else fatal

    def body(self):
        b = {'code': self.code, 'message': self.message}
        if self.path is not None:
            b['path'] = self.path
        if self.errno is not None:
            b['errno'] = self.errno
        return b


def protocol_error(message):
    return Failure('PROTOCOL', 'helper protocol: ' + message)


def os_failure(err, path, side):
    """An OSError as the client expects it: the code by errno and side, the wording left to the client."""
    name = errno_names.errorcode.get(err.errno, 'EIO')
    if side == 'source':
        code = 'SOURCE_NOT_FOUND' if name == 'ENOENT' else 'SOURCE_UNREADABLE'
    else:
        code = {'ENOSPC': 'DEST_NO_SPACE', 'EDQUOT': 'DEST_NO_SPACE', 'EACCES': 'DEST_NOT_WRITABLE', 'EPERM': 'DEST_NOT_WRITABLE',
                'EROFS': 'DEST_NOT_WRITABLE', 'ENOENT': 'DEST_DIR_MISSING', 'ENOTDIR': 'DEST_DIR_MISSING'}.get(name, 'DEST_IO')
    return Failure(code, '%s: %s' % (os.strerror(err.errno), path), path, name)


# --- msgpack, the subset the protocol uses -----------------------------------------------

def unpack(data):
    value, at = _unpack(data, 0, 0)
    if at != len(data):
        raise protocol_error('control body has %d bytes after its value' % (len(data) - at))
    return value


def _unpack(b, i, depth):
    if depth > 16:
        raise protocol_error('control body nested too deeply')
    if i >= len(b):
        raise protocol_error('control body ends early')
    t = b[i]
    i += 1
    if t <= 0x7f:
        return t, i
    if t >= 0xe0:
        return t - 0x100, i
    if 0x80 <= t <= 0x8f:
        return _map(b, i, t & 0x0f, depth)
    if 0x90 <= t <= 0x9f:
        return _array(b, i, t & 0x0f, depth)
    if 0xa0 <= t <= 0xbf:
        return _text(b, i, t & 0x1f)
    if t == 0xc0:
        return None, i
    if t == 0xc2:
        return False, i
    if t == 0xc3:
        return True, i
    fixed = {0xcc: '>B', 0xcd: '>H', 0xce: '>I', 0xcf: '>Q', 0xd0: '>b', 0xd1: '>h', 0xd2: '>i', 0xd3: '>q', 0xca: '>f', 0xcb: '>d'}
    if t in fixed:
        s = struct.Struct(fixed[t])
        if i + s.size > len(b):
            raise protocol_error('control body ends early')
        v = s.unpack_from(b, i)[0]
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return v, i + s.size
    sized = {0xc4: ('>B', 'bin'), 0xc5: ('>H', 'bin'), 0xc6: ('>I', 'bin'), 0xd9: ('>B', 'str'), 0xda: ('>H', 'str'),
             0xdb: ('>I', 'str'), 0xdc: ('>H', 'array'), 0xdd: ('>I', 'array'), 0xde: ('>H', 'map'), 0xdf: ('>I', 'map')}
    if t in sized:
        fmt, kind = sized[t]
        s = struct.Struct(fmt)
        if i + s.size > len(b):
            raise protocol_error('control body ends early')
        n = s.unpack_from(b, i)[0]
        i += s.size
        if kind == 'str':
            return _text(b, i, n)
        if kind == 'bin':
            if i + n > len(b):
                raise protocol_error('control body ends early')
            return bytes(b[i:i + n]), i + n
        if kind == 'array':
            return _array(b, i, n, depth)
        return _map(b, i, n, depth)
    raise protocol_error('unsupported msgpack type 0x%02x' % t)


def _text(b, i, n):
    if i + n > len(b):
        raise protocol_error('control body ends early')
    try:
        return bytes(b[i:i + n]).decode('utf-8'), i + n
    except UnicodeDecodeError:
        raise protocol_error('a string is not UTF-8')


def _array(b, i, n, depth):
    out = []
    for _ in range(n):
        v, i = _unpack(b, i, depth + 1)
        out.append(v)
    return out, i


def _map(b, i, n, depth):
    out = {}
    for _ in range(n):
        k, i = _unpack(b, i, depth + 1)
        if not isinstance(k, str):
            raise protocol_error('a map key is not a string')
        v, i = _unpack(b, i, depth + 1)
        out[k] = v
    return out, i


def pack(v, out):
    if v is None:
        out.append(0xc0)
    elif v is True:
        out.append(0xc3)
    elif v is False:
        out.append(0xc2)
    elif isinstance(v, int):
        if 0 <= v <= 0x7f:
            out.append(v)
        elif -32 <= v < 0:
            out.append(v + 0x100)
        elif 0 <= v <= 0xffffffff:
            out += struct.pack('>BI', 0xce, v)
        elif 0 <= v < 1 << 64:
            out += struct.pack('>BQ', 0xcf, v)
        else:
            out += struct.pack('>Bq', 0xd3, v)
    elif isinstance(v, float):
        out += struct.pack('>Bd', 0xcb, v)
    elif isinstance(v, str):
        e = v.encode('utf-8')
        out += struct.pack('>BI', 0xdb, len(e))
        out += e
    elif isinstance(v, (bytes, bytearray)):
        out += struct.pack('>BI', 0xc6, len(v))
        out += v
    elif isinstance(v, (list, tuple)):
        out += struct.pack('>BI', 0xdd, len(v))
        for x in v:
            pack(x, out)
    elif isinstance(v, dict):
        out += struct.pack('>BI', 0xdf, len(v))
        for k, x in v.items():
            pack(k, out)
            pack(x, out)
    else:
        raise TypeError('cannot pack %r' % (v,))


# --- hashes ---------------------------------------------------------------------------------

class Crc32(object):
    def __init__(self):
        self.value = 0

    def update(self, data):
        self.value = zlib.crc32(data, self.value)

    def digest(self):
        return '%08x' % (self.value & 0xffffffff)


class Sha256(object):
    def __init__(self):
        import hashlib
        self.h = hashlib.sha256()

    def update(self, data):
        self.h.update(data)

    def digest(self):
        return self.h.hexdigest()


HASHERS = {'crc32': Crc32, 'sha256': Sha256}


def hasher(name):
    if name not in HASHERS:
        raise protocol_error('this helper (python) cannot hash %s; it has %s' % (name, ', '.join(sorted(HASHERS))))
    return HASHERS[name]()


# --- the session ----------------------------------------------------------------------------

def grow_pipes():
    """sshd's 64 KiB pipes to 1 MiB (see serve/src/pipes.ts): None when done, else why not."""
    reason = None
    for fd in (0, 1):
        try:
            if not stat_mod.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            if fcntl.fcntl(fd, F_GETPIPE_SZ) < PIPE_BYTES:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            reason = "the pipes could not grow (over /proc/sys/fs/pipe-max-size, or the user's pipe quota is spent)"
    return reason


def write_all(fd, data):
    view = memoryview(data)
    while len(view) > 0:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd, data, offset):
    view = memoryview(data)
    while len(view) > 0:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno_names.EIO, 'short write')
        view = view[n:]
        offset += n


def mounted_fs_type(path):
    """The type of the file system `path` is on, from /proc/self/mountinfo (its longest mount point)."""
    real = os.path.realpath(path)
    best, kind = '', None
    unescape = lambda m: chr(int(m.group(1), 8))
    with open('/proc/self/mountinfo') as f:
        for line in f:
            parts = line.split()
            if '-' not in parts[6:]:
                continue
            import re
            point = re.sub(r'\\([0-7]{3})', unescape, parts[4])
            fstype = parts[parts.index('-', 6) + 1]
            inside = real == point or real.startswith(point.rstrip('/') + '/')
            # A later mount on the same point hides the earlier: >=.
            if inside and len(point) >= len(best):
                best, kind = point, fstype
    return kind


def stat_of(st):
    kind = 'file' if stat_mod.S_ISREG(st.st_mode) else 'directory' if stat_mod.S_ISDIR(st.st_mode) else 'other'
    return {'type': kind, 'size': st.st_size, 'mode': st.st_mode & 0o7777, 'mtimeMs': st.st_mtime_ns // 1000000,
            'ino': st.st_ino, 'dev': st.st_dev, 'uid': st.st_uid, 'nlink': st.st_nlink}


def same_as(fd, path, when):
    """Fails with DEST_REPLACED unless `path` names the file open as fd (not a link to it)."""
    mine = os.fstat(fd)
    try:
        st = os.lstat(path)
    except OSError as err:
        raise Failure('DEST_REPLACED', '%s is gone %s (%s)' % (path, when, errno_names.errorcode.get(err.errno, 'EIO')), path)
    if stat_mod.S_ISLNK(st.st_mode):
        problem = 'a symbolic link'
    elif not stat_mod.S_ISREG(st.st_mode):
        problem = 'something that is not a regular file'
    elif (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev):
        problem = 'another file (inode %d, not %d)' % (st.st_ino, mine.st_ino)
    else:
        return
    raise Failure('DEST_REPLACED', 'found %s at %s %s' % (problem, path, when), path)


def open_direct(path, choice, fd):
    """
    A second descriptor of the file open as fd, with O_DIRECT (choice True, or 'auto' on a local disk
    file system), or why not. Opened through /proc/self/fd: the open file itself, not whatever its
    name points at by now.
    """
    if not hasattr(os, 'O_DIRECT'):
        return None, 'this platform has no O_DIRECT'
    if choice == 'auto':
        try:
            kind = mounted_fs_type('/proc/self/fd/%d' % fd)
        except (OSError, ValueError, IndexError) as err:
            return None, 'the file system of %s cannot be told (/proc/self/mountinfo: %s)' % (path, err)
        if kind not in LOCAL_DISK_FILESYSTEMS:
            return None, 'its file system (%s) is not a local disk file system ferry writes around the page cache by default (%s); --direct-io forces it' % (kind, ', '.join(LOCAL_DISK_FILESYSTEMS))
    try:
        direct_fd = os.open('/proc/self/fd/%d' % fd, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        a, b = os.fstat(fd), os.fstat(direct_fd)
        if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):
            os.close(direct_fd)
            return None, 'the file reopened through /proc/self/fd was not the same file'
        return direct_fd, None
    except OSError as err:
        if err.errno == errno_names.EINVAL:
            return None, 'the file system of %s does not support direct I/O (O_DIRECT: EINVAL)' % path
        return None, '%s cannot be opened with O_DIRECT: %s' % (path, os.strerror(err.errno))


class OpenFile(object):
    def __init__(self, fd, path, size, writable, direct_fd=None):
        self.fd = fd
        self.path = path
        self.size = size
        self.writable = writable
        # The O_DIRECT descriptor whole pages are written through, while the file system takes them.
        self.direct_fd = direct_fd
        # Writes queued and not finished, and the first that failed (every later WRITE, FSYNC and CLOSE fails with it).
        self.writing = 0
        self.error = None

    def write(self, view, offset):
        """pwrites view at offset: its whole pages through direct_fd where it can, the rest buffered."""
        n = len(view)
        whole = n - n % DIRECT_ALIGNMENT
        if self.direct_fd is not None and whole > 0 and offset % DIRECT_ALIGNMENT == 0:
            try:
                pwrite_all(self.direct_fd, view[:whole], offset)
                view, offset = view[whole:], offset + whole
            except OSError as err:
                if err.errno != errno_names.EINVAL:
                    raise
                # Refused after all (a file system that takes the open but not the write): buffered from now on.
                os.close(self.direct_fd)
                self.direct_fd = None
        if len(view) > 0:
            pwrite_all(self.fd, view, offset)

    def close(self):
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
        os.close(self.fd)


class Writer(object):
    """
    The pwrites, on a thread of their own, in the order they were queued, from
    a fixed set of buffers: taking a buffer waits while they are all queued.
    """

    def __init__(self, buffers):
        # mmap: page-aligned, as O_DIRECT needs; only the buffers in use at once are ever touched.
        self.free = [mmap.mmap(-1, CHUNK_BYTES) for _ in range(buffers)]
        self.jobs = []
        self.lock = threading.Condition()
        thread = threading.Thread(target=self.run, name='ferry-writer')
        thread.daemon = True
        thread.start()

    def buffer(self):
        with self.lock:
            while not self.free:
                self.lock.wait()
            return self.free.pop()

    def write(self, f, buf, n, offset):
        """Queues buf[:n] for offset of f; buf comes from buffer()."""
        with self.lock:
            f.writing += 1
            self.jobs.append((f, buf, n, offset))
            self.lock.notify_all()

    def zeros(self, f, n, offset):
        """Queues making n bytes at offset read as zeros (written only where they do not already)."""
        with self.lock:
            f.writing += 1
            self.jobs.append((f, None, n, offset))
            self.lock.notify_all()

    def settle(self, f):
        """Waits for f's queued writes; raises the first that failed."""
        with self.lock:
            while f.writing > 0:
                self.lock.wait()
        if f.error is not None:
            raise f.error

    def run(self):
        while True:
            with self.lock:
                while not self.jobs:
                    self.lock.wait()
                f, buf, n, offset = self.jobs.pop(0)
            try:
                if f.error is None:
                    if buf is None:
                        if os.pread(f.fd, n, offset) != ZERO_CHUNK[:n]:
                            pwrite_all(f.fd, ZERO_CHUNK[:n], offset)
                    else:
                        f.write(memoryview(buf)[:n], offset)
            except OSError as err:
                if f.error is None:
                    f.error = os_failure(err, f.path, 'destination')
            with self.lock:
                if buf is not None:
                    self.free.append(buf)
                f.writing -= 1
                self.lock.notify_all()


def batch_entries_problem(entries):
    """What is wrong with a BATCH's entries, in the words core's batchEntriesProblem uses, or None."""
    if not isinstance(entries, list):
        return 'entries must be a list'
    if len(entries) > MAX_BATCH_ENTRIES:
        return '%d entries exceed %d' % (len(entries), MAX_BATCH_ENTRIES)
    total = 0
    for i, e in enumerate(entries):
        at = 'entries[%d]' % i
        if not isinstance(e, dict):
            return '%s is not a map' % at
        for k in e:
            if k not in ENTRY_KEYS:
                return '%s has an unknown field %s' % (at, k)
        kind = e.get('kind')
        if kind not in BATCH_KINDS:
            return '%s.kind must be dir, file, symlink or hardlink' % at
        is_path = lambda v: isinstance(v, str) and v.startswith('/') and '\0' not in v and len(v) > 1
        if not is_path(e.get('path')):
            return '%s.path must be an absolute path without NUL (not /)' % at
        for k in ('size', 'mode', 'mtimeMs', 'atimeMs'):
            v = e.get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > (1 << 53) - 1):
                return '%s.%s must be a non-negative integer' % (at, k)
        if e.get('mode') is not None and e['mode'] > 0o7777:
            return '%s.mode must be at most 0o7777' % at
        if kind == 'file' and e.get('size') is None:
            return '%s.size is missing (a file)' % at
        if kind != 'file' and e.get('size') not in (None, 0):
            return '%s.size must be absent for a %s' % (at, kind)
        if kind in ('symlink', 'hardlink'):
            t = e.get('target')
            if not isinstance(t, str) or t == '' or '\0' in t:
                return '%s.target must be a non-empty string without NUL' % at
            if kind == 'hardlink' and not is_path(t):
                return '%s.target must be an absolute path (a hard link)' % at
        elif e.get('target') is not None:
            return '%s.target must be absent for a %s' % (at, kind)
        problem = meta_problem(e, at)
        if problem is not None:
            return problem
        total += e.get('size') or 0
        if total > MAX_BATCH_BYTES:
            return "the files' sizes add up to more than %d bytes" % MAX_BATCH_BYTES
    return None


def meta_problem(e, at):
    """What is wrong with an entry's owner and attribute fields, in core's entryMetaProblem words, or None."""
    for k in ('uid', 'gid'):
        v = e.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 0xfffffffe):
            return '%s.%s must be an id from 0 to 4294967294' % (at, k)
    for k in ('user', 'group'):
        v = e.get(k)
        if v is not None and (not isinstance(v, str) or not 0 < len(v) <= 256 or '\0' in v or ':' in v or '\n' in v):
            return "%s.%s must be a name of 1 to 256 characters without NUL, ':' or newline" % (at, k)
    x = e.get('xattrs')
    if x is not None:
        if not isinstance(x, dict):
            return '%s.xattrs must be a map of names to bytes' % at
        if len(x) > MAX_XATTRS_PER_ENTRY:
            return '%s.xattrs holds more than %d attributes' % (at, MAX_XATTRS_PER_ENTRY)
        total = 0
        for n, v in x.items():
            total += len(n) + (len(v) if isinstance(v, bytes) else 0)
            if total > MAX_XATTR_BYTES_PER_ENTRY:
                return '%s.xattrs holds more than %d bytes' % (at, MAX_XATTR_BYTES_PER_ENTRY)
            if n == '' or len(n.encode('utf-8')) > 255 or '\0' in n or '.' not in n:
                return '%s.xattrs has a bad name (1 to 255 bytes, a namespace, no NUL)' % at
            if not isinstance(v, bytes) or len(v) > MAX_XATTR_VALUE_BYTES:
                return '%s.xattrs.%s must be bytes, at most %d' % (at, n, MAX_XATTR_VALUE_BYTES)
    return None


def xattr_wanted(name, xattrs, acls, root):
    """core's xattrWanted: never lustre.* or other system.*; ACLs with --acls; trusted.*, security.* as root."""
    if name.startswith('lustre.'):
        return False
    if name in ACL_XATTRS:
        return acls
    if name.startswith('system.'):
        return False
    if name.startswith('trusted.') or name.startswith('security.'):
        return xattrs and root
    return xattrs and name.startswith('user.')


_ids = {}


def id_of(kind, name):
    """This host's id for a user or group name, or None (no such name, or a name that is all digits)."""
    if name is None or name.isdigit():
        return None
    key = (kind, name)
    if key not in _ids:
        try:
            _ids[key] = pwd.getpwnam(name).pw_uid if kind == 'user' else grp.getgrnam(name).gr_gid
        except (KeyError, NameError):
            _ids[key] = None
    return _ids[key]


def name_of(kind, number):
    key = (kind + '#', number)
    if key not in _ids:
        try:
            _ids[key] = pwd.getpwuid(number).pw_name if kind == 'user' else grp.getgrgid(number).gr_name
        except (KeyError, NameError):
            _ids[key] = None
    return _ids[key]


def owner_of(e):
    """(uid, gid) an entry gets here: this host's id for its name where it has one, else its number; -1 keeps."""
    uid = id_of('user', e.get('user'))
    gid = id_of('group', e.get('group'))
    if uid is None:
        uid = e.get('uid') if e.get('uid') is not None else -1
    if gid is None:
        gid = e.get('gid') if e.get('gid') is not None else -1
    return uid, gid


def owner_failure(err, e, path):
    if err.errno == errno_names.EPERM:
        who = '%s:%s' % (e.get('user') or e.get('uid', '-'), e.get('group') or e.get('gid', '-'))
        return Failure('DEST_NOT_WRITABLE', '%s: cannot give it to %s (EPERM): only root may give files to another user or a group it is not in; copy as root there, or without --preserve=owner' % (path, who), path, 'EPERM')
    return os_failure(err, path, 'destination')


def exact_problem(v, at):
    """core's exactXattrsProblem: SETSTAT's xattrsExact is a map with the booleans xattrs and acls."""
    if v is None:
        return None
    if not isinstance(v, dict):
        return '%s.xattrsExact must be a map with the booleans xattrs and acls' % at
    for k in ('xattrs', 'acls'):
        if not isinstance(v.get(k), bool):
            return '%s.xattrsExact.%s must be a boolean' % (at, k)
    return None


def remove_other_xattrs(target, keep, exact, path):
    """Removes the attributes of the kinds `exact` names that `keep` does not hold (llistxattr, lremovexattr on a path: a link there is not followed)."""
    follow = {} if isinstance(target, int) else {'follow_symlinks': False}
    root = os.geteuid() == 0
    try:
        listed = os.listxattr(target, **follow)
    except OSError as err:
        if err.errno in (errno_names.ENOTSUP, errno_names.EOPNOTSUPP):
            return
        raise os_failure(err, path, 'destination')
    for n in sorted(listed):
        # core's xattrsToRemove: never security.*, the destination's own labels (a file written fresh gets them too).
        if n in keep or n.startswith('security.') or not xattr_wanted(n, exact['xattrs'], exact['acls'], root):
            continue
        try:
            os.removexattr(target, n, **follow)
        except OSError as err:
            if err.errno == errno_names.ENODATA:
                continue
            code = errno_names.errorcode.get(err.errno, 'EIO')
            raise Failure('DEST_NOT_WRITABLE', "%s: cannot remove its extended attribute %s (%s), which the source no longer has: the destination's file system or permissions refuse it; remove it there, or copy without --xattrs/--acls" % (path, n, code), path, code)


def apply_meta(target, e, path, follow=False, exact=None):
    """Owner, then extended attributes, of `target` (an fd, or a path never followed at its last component); `exact`: others of those kinds removed."""
    if e.get('uid') is not None or e.get('gid') is not None:
        uid, gid = owner_of(e)
        try:
            if isinstance(target, int):
                os.fchown(target, uid, gid)
            else:
                os.lchown(target, uid, gid)
        except OSError as err:
            raise owner_failure(err, e, path)
    if exact is not None:
        remove_other_xattrs(target, e.get('xattrs') or {}, exact, path)
    for n, v in sorted((e.get('xattrs') or {}).items()):
        try:
            if isinstance(target, int):
                os.setxattr(target, n, v)
            else:
                os.setxattr(target, n, v, follow_symlinks=False)
        except OSError as err:
            code = errno_names.errorcode.get(err.errno, 'EIO')
            raise Failure('DEST_NOT_WRITABLE', "%s: cannot set its extended attribute %s (%s): the destination's file system or permissions refuse it; copy without --xattrs/--acls to leave them out" % (path, n, code), path, code)


def open_no_follow(path):
    """A descriptor of the directory or regular file at `path`, never through a symbolic link at the name (DEST_CONFLICT)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno_names.ELOOP:
            raise Failure('DEST_CONFLICT', '%s is a symbolic link now: its mode and times were not set (the link was not followed); move it away and rerun' % path, path)
        raise
    mode = os.fstat(fd).st_mode
    if not (stat_mod.S_ISDIR(mode) or stat_mod.S_ISREG(mode)):
        os.close(fd)
        raise Failure('DEST_CONFLICT', '%s is no longer a directory or a regular file: its mode and times were not set; move it away and rerun' % path, path)
    return fd


def has_meta(e):
    return e.get('uid') is not None or e.get('gid') is not None or bool(e.get('xattrs'))


def read_meta(path, st, kind, names, xattrs, acls):
    """Owner names and wanted extended attributes of the entry at path (never following a link there)."""
    out = {}
    if names:
        u, g = name_of('user', st.st_uid), name_of('group', st.st_gid)
        if u is not None:
            out['user'] = u
        if g is not None:
            out['group'] = g
    if (xattrs or acls) and kind in ('file', 'dir'):
        root = os.geteuid() == 0
        try:
            listed = os.listxattr(path, follow_symlinks=False)
        except OSError as err:
            if err.errno in (errno_names.ENOTSUP, errno_names.EOPNOTSUPP):
                return out
            raise
        found = {}
        total = 0
        for n in sorted(listed):
            if not xattr_wanted(n, xattrs, acls, root):
                continue
            try:
                v = os.getxattr(path, n, follow_symlinks=False)
            except OSError as err:
                if err.errno == errno_names.ENODATA:
                    continue
                raise
            found[n] = v
            total += len(n) + len(v)
            if total > MAX_XATTR_BYTES_PER_ENTRY or len(found) > MAX_XATTRS_PER_ENTRY:
                raise OSError(errno_names.E2BIG, 'its extended attributes exceed %d names or %d bytes: not copied' % (MAX_XATTRS_PER_ENTRY, MAX_XATTR_BYTES_PER_ENTRY), path)
        if found:
            out['xattrs'] = found
    return out


def glob_match(name, pattern):
    """core's matchName: sh's *, ? and [...]; a leading dot only matched by a leading dot."""
    if name.startswith('.') and not (pattern.startswith('.') or pattern.startswith('\\.')):
        return False
    import fnmatch
    return fnmatch.fnmatchcase(name, glob_translate(pattern))


def glob_translate(p):
    """sh's pattern in fnmatch's words: a backslash quotes (fnmatch has no quoting: [c] does), ^ negates a class."""
    out = []
    i = 0
    while i < len(p):
        c = p[i]
        if c == '\\' and i + 1 < len(p):
            out.append('[%s]' % p[i + 1] if p[i + 1] not in '!^' else p[i + 1])
            i += 2
            continue
        if c == '[' and i + 1 < len(p) and p[i + 1] == '^':
            out.append('[!')
            i += 2
            continue
        out.append(c)
        i += 1
    return ''.join(out)


def is_pattern(component):
    i = 0
    while i < len(component):
        c = component[i]
        if c == '\\':
            i += 2
            continue
        if c in '*?':
            return True
        if c == '[' and class_end(component, i) > 0:
            return True
        i += 1
    return False


def class_end(p, start):
    """Index of the ] closing the class opening at start, or -1 (then [ is a plain character), as core's classEnd."""
    i = start + 1
    if i < len(p) and p[i] in '!^':
        i += 1
    if i < len(p) and p[i] == ']':
        i += 1
    while i < len(p):
        if p[i] == '\\':
            i += 1
        elif p[i] == ']':
            return i
        i += 1
    return -1


def glob_paths(pattern):
    """The paths an absolute pattern matches, sorted (core's expandGlob): directories listed, nothing run."""
    found = ['/']
    literal_tail = False
    for part in [c for c in pattern.split('/') if c]:
        nxt = []
        if not is_pattern(part):
            import re
            plain = re.sub(r'\\(.)', r'\1', part)
            nxt = [os.path.join(d, plain) for d in found]
            literal_tail = True
        else:
            literal_tail = False
            for d in found:
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                for n in names:
                    if glob_match(n, part):
                        nxt.append(os.path.join(d, n))
                        if len(nxt) > MAX_GLOB_MATCHES:
                            raise Failure('USAGE', '%s matches more than %d names: narrow the pattern, or copy the directory with -r' % (pattern, MAX_GLOB_MATCHES), pattern)
        found = nxt
        if not found:
            return []
    if literal_tail:
        found = [p for p in found if os.path.lexists(p)]
    return sorted(found)


def read_batch_problem(entries):
    """What is wrong with a READ_BATCH's entries, in the words core's readBatchProblem uses, or None."""
    if not isinstance(entries, list):
        return 'entries must be a list'
    if len(entries) > MAX_BATCH_ENTRIES:
        return '%d entries exceed %d' % (len(entries), MAX_BATCH_ENTRIES)
    total = 0
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            return 'entries[%d] is not a map' % i
        for k in e:
            if k not in ('path', 'size'):
                return 'entries[%d] has an unknown field %s' % (i, k)
        p = e.get('path')
        if not isinstance(p, str) or not p.startswith('/') or '\0' in p:
            return 'entries[%d].path must be an absolute path without NUL' % i
        v = e.get('size')
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > (1 << 53) - 1:
            return 'entries[%d].size must be a non-negative integer' % i
        total += v
        if total > MAX_BATCH_BYTES:
            return "the files' sizes add up to more than %d bytes" % MAX_BATCH_BYTES
    return None


def walk_error(rel, err):
    return {'path': rel, 'error': {'code': errno_names.errorcode.get(err.errno, 'EIO'), 'message': '%s: %s' % (os.strerror(err.errno), err.filename or rel)}}


def temp_name(path):
    """`.NAME.ferry-<24 hex>.part` next to path: a name nobody can know in advance."""
    d, base = os.path.split(path)
    return os.path.join(d, '.%s.ferry-%s.part' % (base, os.urandom(12).hex()))


def at_fresh_name(path, make):
    """make(name) at fresh temporary names until one is free; the name."""
    tries = 4
    for i in range(tries):
        name = temp_name(path)
        try:
            make(name)
            return name
        except OSError as err:
            if err.errno != errno_names.EEXIST or i == tries - 1:
                raise os_failure(err, path, 'destination')


def conflict(path, found, name):
    return Failure('DEST_CONFLICT', '%s cannot be made: %s is in the way there: move it away and copy again' % (path, found), path, name)


def make_directory(path):
    try:
        os.mkdir(path, 0o700)
        return
    except OSError as err:
        if err.errno != errno_names.EEXIST:
            raise os_failure(err, path, 'destination')
    try:
        st = os.lstat(path)
    except OSError as err:
        raise os_failure(err, path, 'destination')
    if stat_mod.S_ISLNK(st.st_mode):
        raise conflict(path, 'a symbolic link', 'EEXIST')
    if not stat_mod.S_ISDIR(st.st_mode):
        raise conflict(path, 'a file', 'ENOTDIR')


def rename_into(name, path, check=None):
    """Renames name over path, or removes name and fails (a directory at path: DEST_CONFLICT)."""
    try:
        if check is not None:
            st = os.lstat(name)
            if not stat_mod.S_ISREG(st.st_mode) or (st.st_ino, st.st_dev) != check:
                raise Failure('DEST_REPLACED', 'the temporary file %s of %s is not the file ferry created: nothing was renamed into place. Check who can write in that directory' % (name, path), path)
        os.rename(name, path)
    except OSError as err:
        try:
            os.unlink(name)
        except OSError:
            pass
        if err.errno in (errno_names.EISDIR, errno_names.ENOTEMPTY, errno_names.EEXIST):
            raise conflict(path, 'a directory', 'EISDIR')
        raise os_failure(err, path, 'destination')


def discard(name):
    try:
        os.unlink(name)
    except OSError:
        pass


def place_symlink(e):
    name = at_fresh_name(e['path'], lambda n: os.symlink(e['target'], n))
    if e.get('uid') is not None or e.get('gid') is not None:
        try:
            apply_meta(name, {'uid': e.get('uid'), 'gid': e.get('gid'), 'user': e.get('user'), 'group': e.get('group')}, e['path'])
        except Failure:
            discard(name)
            raise
    if e.get('mtimeMs') is not None:
        mtime = e['mtimeMs'] * 1000000
        atime = e['atimeMs'] * 1000000 if e.get('atimeMs') is not None else mtime
        try:
            os.utime(name, ns=(atime, mtime), follow_symlinks=False)
        except OSError as err:
            discard(name)
            raise os_failure(err, e['path'], 'destination')
    rename_into(name, e['path'])


def place_hardlink(e):
    name = at_fresh_name(e['path'], lambda n: os.link(e['target'], n, follow_symlinks=False))
    try:
        a, b = os.lstat(name), os.lstat(e['path'])
        if (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev):
            # Already a name of that file: rename(2) would do nothing and leave both names.
            discard(name)
            return
    except OSError:
        pass
    rename_into(name, e['path'])


def sync_directory(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise os_failure(err, path, 'destination')


def fit_results(results):
    """A COMMIT's results as they fit in one answer: failures keep code and errno, the client names their paths."""
    out = bytearray()
    pack({'results': results}, out)
    if len(out) <= MAX_BATCH_BODY_BYTES:
        return results
    short = []
    for r in results:
        if r['ok']:
            short.append(r)
        else:
            e = r['error']
            s = {'code': e['code'], 'message': e.get('errno') or e['code']}
            if e.get('errno') is not None:
                s['errno'] = e['errno']
            short.append({'ok': False, 'error': s})
    return short


def failed_ancestor(path, failed):
    """The directory of `failed` (this batch's, not made) that path lies under, and its failure, or None."""
    if not failed:
        return None
    d = os.path.dirname(path)
    while d not in ('/', ''):
        if d in failed:
            return d, failed[d]
        d = os.path.dirname(d)
    return None


def under_failed(path, found):
    d, failure = found
    return Failure(failure.code, '%s was not made: its directory %s could not be (%s)' % (path, d, failure.message), path, failure.errno)


class BatchFile(object):
    def __init__(self, index, entry, algorithm):
        self.index = index
        self.entry = entry
        self.size = entry['size']
        self.received = 0
        self.hasher = hasher(algorithm)
        # Its temporary file (an OpenFile) once created, or the Failure that stopped it.
        self.file = None
        self.name = None
        self.ident = None
        self.error = None
        self.opened = False
        # Complete (mode and times set) and open until the batch's sync.
        self.held = False


class Batch(object):
    def __init__(self, fid, entries, algorithm):
        self.id = fid
        self.entries = entries
        self.files = [BatchFile(i, e, algorithm) for i, e in enumerate(entries) if e['kind'] == 'file']
        self.cursor = 0
        self.total = sum(f.size for f in self.files)
        self.received = 0
        self.dir_errors = {}
        # The same failures by path: nothing is made under them (whatever is at their name is not the batch's).
        self.failed_dirs = {}
        self.committed = False
        # Files of this batch open now.
        self.open_files = 0


class Upload(object):
    def __init__(self, file, offset, length, h):
        self.file = file
        self.offset = offset
        self.length = length
        self.received = 0
        self.hasher = h


class Session(object):
    def __init__(self, pipes_reason):
        self.pipes_reason = pipes_reason
        self.files = {}
        self.next_handle = 1
        self.uploads = {}
        # WRITEs that failed before all their DATA arrived: what still comes for them is dropped.
        self.discarded = set()
        self.read_buf = bytearray(HEADER_BYTES + CHUNK_BYTES)
        self.read_view = memoryview(self.read_buf)
        self.writer = Writer(PENDING_BYTES // CHUNK_BYTES)
        # Answers may come from the thread that commits batches too: one frame at a time on stdout.
        self.out_lock = threading.Lock()
        self.batches = {}
        self.receiving = None
        self.syncfs_call = libc_syncfs()
        self.syncfs_works = self.syncfs_call is not None or SYNC_PROGRAM is not None
        self.pools_lock = threading.Lock()
        self._syncs = None
        self._committer = None

    def pool(self, name, threads):
        """A thread pool made when first used (from either thread: under a lock)."""
        with self.pools_lock:
            pool = getattr(self, name)
            if pool is None:
                from concurrent.futures import ThreadPoolExecutor
                pool = ThreadPoolExecutor(threads)
                setattr(self, name, pool)
            return pool

    @property
    def syncs(self):
        return self._syncs or self.pool('_syncs', SYNC_THREADS)

    @property
    def committer(self):
        """Commits one batch at a time, in order, while the main thread reads the next one's bytes."""
        return self._committer or self.pool('_committer', 1)

    # Pulls: WALK and READ_BATCH ---------------------------------------------------------------

    def walk(self, fid, body):
        """
        The tree under `root` in ENTRIES frames, then an OK: lstat (links are
        reported, not followed), a directory before its contents, a further
        name of a file with several links as a `hardlink` to the first name
        seen (by device and inode), a sparse file with its allocated bytes.
        Entries that cannot be read come out as errors and the walk goes on.
        Directories still to read wait as paths; each frame is written (and
        waits for the SSH window) before the walk goes on.
        """
        root = self.need_str(body, 'WALK', 'root')
        if not root.startswith('/'):
            raise protocol_error('WALK.root must be an absolute path')
        names, xattrs, acls = body.get('names') is True, body.get('xattrs') is True, body.get('acls') is True
        first_names = {}
        out = []
        state = {'bytes': 0, 'since': 0.0, 'count': 0}

        def flush():
            if not out:
                return
            payload = bytearray(b'\x81')
            pack('items', payload)
            payload += struct.pack('>BI', 0xdd, len(out))
            for item in out:
                payload += item
            with self.out_lock:
                write_all(1, HEADER.pack(ENTRIES, 0, 0, fid, len(payload)) + payload)
            del out[:]
            state['bytes'] = 0

        def emit(item):
            packed = bytearray()
            pack(item, packed)
            if not out:
                state['since'] = time.monotonic()
            out.append(packed)
            state['bytes'] += len(packed)
            state['count'] += 1
            if len(out) >= WALK_CHUNK_ITEMS or state['bytes'] >= WALK_CHUNK_BYTES or time.monotonic() - state['since'] >= WALK_CHUNK_SECONDS:
                flush()

        def describe(rel, path, st):
            mode = st.st_mode
            kind = 'file' if stat_mod.S_ISREG(mode) else 'dir' if stat_mod.S_ISDIR(mode) else 'symlink' if stat_mod.S_ISLNK(mode) else 'special'
            target = None
            if kind == 'symlink':
                target = os.readlink(path)
                try:
                    target.encode('utf-8')
                except UnicodeEncodeError:
                    return {'path': rel, 'error': {'code': 'ENAME', 'message': 'the link target is not valid UTF-8: not copied'}}
            if kind == 'file' and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = first_names.get(key)
                if first is None:
                    first_names[key] = rel
                else:
                    kind = 'hardlink'
                    target = first
            item = {'path': rel, 'kind': kind, 'size': st.st_size if kind == 'file' else 0, 'mode': stat_mod.S_IMODE(mode),
                    'uid': st.st_uid, 'gid': st.st_gid, 'mtimeMs': st.st_mtime_ns / 1000000, 'atimeMs': st.st_atime_ns / 1000000,
                    'dev': st.st_dev, 'ino': st.st_ino, 'nlink': st.st_nlink}
            if target is not None:
                item['target'] = target
            allocated = st.st_blocks * 512
            if kind == 'file' and allocated < st.st_size:
                item['allocated'] = allocated
            if names or xattrs or acls:
                item.update(read_meta(path, st, kind, names, xattrs, acls))
            return item

        try:
            st = os.lstat(root)
            emit(describe('', root, st))
        except OSError as err:
            emit(walk_error('', err))
            flush()
            return {'size': state['count']}
        dirs = [''] if stat_mod.S_ISDIR(st.st_mode) else []
        while dirs:
            rel = dirs.pop()
            path = root if rel == '' else os.path.join(root, rel)
            found = []
            try:
                # Names as bytes: one that is not UTF-8 is reported, never copied under another name.
                with os.scandir(os.fsencode(path)) as it:
                    for d in it:
                        try:
                            name = d.name.decode('utf-8')
                        except UnicodeDecodeError:
                            emit({'path': (rel + '/' if rel else '') + d.name.decode('latin-1'),
                                  'error': {'code': 'ENAME', 'message': 'the name is not valid UTF-8 (bytes %s): not copied' % d.name.hex()}})
                            continue
                        child = rel + '/' + name if rel else name
                        try:
                            item = describe(child, os.path.join(path, name), os.lstat(os.path.join(path, name)))
                        except OSError as err:
                            item = walk_error(child, err)
                        emit(item)
                        if item.get('kind') == 'dir':
                            found.append(child)
            except OSError as err:
                emit(walk_error(rel, err))
            found.reverse()
            dirs.extend(found)
        flush()
        return {'size': state['count']}

    def read_batch(self, fid, body):
        """
        READ_BATCH: each file's bytes in order, exactly its listed size (one
        that changed since it was listed is padded or cut, and fails alone
        with SOURCE_CHANGED), runs of zeros as ZEROS frames; then one OK with
        a result per file. Files are opened without following a link at the name.
        """
        algorithm = body.get('algorithm')
        hasher(algorithm)
        entries = body.get('entries')
        problem = read_batch_problem(entries)
        if problem is not None:
            raise protocol_error('READ_BATCH.' + problem)
        results = [self.read_batch_file(fid, e['path'], e['size'], algorithm) for e in entries]
        return {'results': fit_results(results)}

    def read_batch_file(self, fid, path, size, algorithm):
        sent = [0]

        def failed(failure):
            while sent[0] < size:
                n = min(CHUNK_BYTES, size - sent[0])
                sent[0] += n
                self.send_control(ZEROS, fid, {'length': n})
            return {'ok': False, 'error': failure.body()}

        def changed(why):
            return Failure('SOURCE_CHANGED', '%s changed since it was listed (%s): not copied; copy it again' % (path, why), path)

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            return failed(changed('it is a symbolic link now') if err.errno == errno_names.ELOOP else os_failure(err, path, 'source'))
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                return failed(changed('it is no longer a regular file'))
            h = hasher(algorithm)
            while sent[0] < size:
                n = min(CHUNK_BYTES, size - sent[0])
                view = self.read_view[HEADER_BYTES:HEADER_BYTES + n]
                got = 0
                while got < n:
                    if hasattr(os, 'preadv'):
                        k = os.preadv(fd, [view[got:]], sent[0] + got)
                    else:
                        data = os.pread(fd, n - got, sent[0] + got)
                        k = len(data)
                        view[got:got + k] = data
                    if k == 0:
                        break
                    got += k
                data = view[:got]
                h.update(data)
                sent[0] += got
                if got > 0 and data == ZERO_CHUNK[:got]:
                    self.send_control(ZEROS, fid, {'length': got})
                elif got > 0:
                    HEADER.pack_into(self.read_buf, 0, DATA, 0, 0, fid, got)
                    with self.out_lock:
                        write_all(1, self.read_view[:HEADER_BYTES + got])
                if got < n:
                    return failed(changed('it ended at %d of %d bytes' % (sent[0], size)))
            if os.pread(fd, 1, size):
                return failed(changed('it holds more than %d bytes' % size))
            return {'ok': True, 'hash': h.digest()}
        except OSError as err:
            return failed(os_failure(err, path, 'source'))
        finally:
            os.close(fd)

    # Output ----------------------------------------------------------------------------------

    def send_control(self, ftype, fid, body):
        payload = bytearray()
        pack(body, payload)
        with self.out_lock:
            write_all(1, HEADER.pack(ftype, 0, 0, fid, len(payload)) + payload)

    def reply(self, fid, body):
        self.send_control(OK, fid, body)

    def reply_error(self, fid, failure):
        self.send_control(ERROR, fid, failure.body())

    # Checks ------------------------------------------------------------------------------------

    @staticmethod
    def need_int(body, name, key):
        v = body.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > (1 << 53):
            raise protocol_error('%s.%s must be a non-negative integer' % (name, key))
        return v

    @staticmethod
    def need_str(body, name, key):
        v = body.get(key)
        if not isinstance(v, str) or v == '' or '\0' in v:
            raise protocol_error('%s.%s must be a non-empty string without NUL' % (name, key))
        return v

    def file_of(self, body, name):
        handle = self.need_int(body, name, 'handle')
        f = self.files.get(handle)
        if f is None:
            raise Failure('PROTOCOL', 'unknown file handle %d' % handle)
        return f

    def bounded(self, f, body, name):
        offset = self.need_int(body, name, 'offset')
        length = self.need_int(body, name, 'length')
        if offset + length > f.size:
            raise Failure('PROTOCOL', 'range [%d, %d) lies beyond the end (%d) of %s' % (offset, offset + length, f.size, f.path), f.path)
        return offset, length

    # Requests ----------------------------------------------------------------------------------

    def on_control(self, ftype, fid, body):
        if not isinstance(body, dict):
            raise protocol_error('%s body is not a map' % NAMES[ftype])
        if ftype == ZEROS:
            self.on_zeros(fid, self.need_int(body, 'ZEROS', 'length'))
            return
        if ftype == BATCH:
            self.batch(fid, body)
            return
        if ftype == COMMIT:
            self.commit(fid, body)
            return
        if ftype in (OK, ERROR, ENTRIES):
            raise Failure('PROTOCOL', 'unexpected %s frame from the client' % NAMES[ftype])
        try:
            handler = {HELLO: self.hello, OPEN: self.open, WRITE: self.write, READ: self.read, HASH: self.hash,
                       FSYNC: self.fsync, SETSTAT: self.setstat, CLOSE: self.close, STAT: self.stat,
                       RENAME: self.rename, UNLINK: self.unlink, WALK: self.walk, READ_BATCH: self.read_batch, GLOB: self.glob,
                       COPY_RANGE: self.copy_range}[ftype]
        except KeyError:
            raise protocol_error('unknown frame type %d' % ftype)
        try:
            answer = handler(fid, body)
        except Failure as failure:
            if failure.fatal:
                raise
            self.reply_error(fid, failure)
            return
        if answer is not None:
            self.reply(fid, answer)

    def hello(self, fid, body):
        self.need_int(body, 'HELLO', 'version')
        caps = ['write', 'read', 'hash', 'fsync', 'setstat', 'rename', 'safe-files', 'batch', 'tree-read', 'tree-meta', 'copy-range', 'xattrs-exact'] + ['hash:' + h for h in sorted(HASHERS)]
        return {'hello': {'version': PROTOCOL_VERSION, 'software': SOFTWARE, 'capabilities': caps, 'umask': UMASK, 'euid': os.geteuid()}}

    def glob(self, fid, body):
        pattern = self.need_str(body, 'GLOB', 'pattern')
        if not pattern.startswith('/'):
            raise protocol_error('GLOB.pattern must be an absolute path')
        return {'paths': glob_paths(pattern)}

    def open(self, fid, body):
        path = self.need_str(body, 'OPEN', 'path')
        policy = body.get('policy')
        if policy not in ('create', 'write', 'read'):
            raise protocol_error('OPEN.policy must be create, write or read')
        size = self.need_int(body, 'OPEN', 'size') if body.get('size') is not None else 0
        exclusive = body.get('exclusive')
        if exclusive not in (None, True, False):
            raise protocol_error('OPEN.exclusive must be a boolean')
        mode = self.need_int(body, 'OPEN', 'mode') if body.get('mode') is not None else 0o600 if exclusive else 0o644
        # Destination files are never reached through a symbolic link (O_NOFOLLOW); `exclusive`:
        # a new file or nothing (EEXIST), whatever another user planted at the name.
        try:
            if policy == 'create':
                how = os.O_EXCL if exclusive else os.O_TRUNC
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | how | os.O_CLOEXEC, mode)
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    os.close(fd)
                    raise
            elif policy == 'write':
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            else:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise os_failure(err, path, 'source' if policy == 'read' else 'destination')
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            os.close(fd)
            raise Failure('PROTOCOL', '%s is not a regular file' % path, path, fatal=False)
        direct = body.get('direct')
        if direct not in (None, True, False, 'auto'):
            os.close(fd)
            raise protocol_error("OPEN.direct must be a boolean or 'auto'")
        handle = self.next_handle
        self.next_handle += 1
        direct_fd, reason = (None, None)
        if direct in (True, 'auto') and policy == 'write':
            direct_fd, reason = open_direct(path, direct, fd)
        self.files[handle] = OpenFile(fd, path, st.st_size, policy != 'read', direct_fd)
        answer = {'handle': handle, 'size': st.st_size, 'stat': stat_of(st)}
        if direct in (True, 'auto'):
            answer['direct'] = direct_fd is not None
            if reason is not None:
                answer['directReason'] = reason
        if self.pipes_reason is not None:
            answer['pipesReason'] = self.pipes_reason
        return answer

    def write(self, fid, body):
        f = self.file_of(body, 'WRITE')
        if not f.writable:
            raise Failure('PROTOCOL', 'WRITE to %s, which was opened read-only' % f.path, f.path)
        offset, length = self.bounded(f, body, 'WRITE')
        h = hasher(body.get('algorithm'))
        if fid in self.uploads or fid in self.batches:
            raise protocol_error('request id %d is already in use' % fid)
        self.discarded.discard(fid)
        if f.error is not None:
            # The stream carries this WRITE's DATA all the same: it is dropped (see on_data).
            if length > 0:
                self.discarded.add(fid)
            raise Failure(f.error.code, f.error.message, f.error.path, f.error.errno, fatal=False)
        u = Upload(f, offset, length, h)
        if length == 0:
            return {'bytes': 0, 'hash': h.digest()}
        self.uploads[fid] = u
        return None

    def upload_of(self, fid, what):
        u = self.uploads.get(fid)
        if u is None:
            raise protocol_error('%s for unknown request %d' % (what, fid))
        return u

    def finish_upload(self, fid, u):
        if u.received == u.length:
            del self.uploads[fid]
            self.reply(fid, {'bytes': u.received, 'hash': u.hasher.digest()})

    def on_data(self, fid, view):
        if fid in self.discarded:
            return
        b = self.batches.get(fid)
        if b is not None:
            self.batch_bytes(b, view, len(view), 'DATA')
            return
        u = self.upload_of(fid, 'DATA')
        n = len(view)
        if u.received + n > u.length:
            raise protocol_error('DATA for request %d overruns its length %d' % (fid, u.length))
        u.hasher.update(view)
        at = 0
        while at < n:
            k = min(CHUNK_BYTES, n - at)
            buf = self.writer.buffer()
            buf[:k] = view[at:at + k]
            self.writer.write(u.file, buf, k, u.offset + u.received + at)
            at += k
        u.received += n
        self.finish_upload(fid, u)

    def on_zeros(self, fid, n):
        if fid in self.discarded:
            return
        if n > CHUNK_BYTES:
            raise protocol_error('ZEROS of %d bytes exceeds %d' % (n, CHUNK_BYTES))
        b = self.batches.get(fid)
        if b is not None:
            self.batch_bytes(b, None, n, 'ZEROS')
            return
        u = self.upload_of(fid, 'ZEROS')
        if u.received + n > u.length:
            raise protocol_error('ZEROS for request %d overruns its length %d' % (fid, u.length))
        u.hasher.update(ZERO_CHUNK[:n])
        # Zeros are written only where the file does not read as zeros (a fresh sparse file does).
        if n > 0:
            self.writer.zeros(u.file, n, u.offset + u.received)
        u.received += n
        self.finish_upload(fid, u)

    # Batches ------------------------------------------------------------------------------------

    def batch(self, fid, body):
        if body.get('algorithm') not in ('xxh3', 'crc32', 'sha256'):
            raise protocol_error('BATCH.algorithm must be one of xxh3, crc32, sha256')
        problem = batch_entries_problem(body.get('entries'))
        if problem is not None:
            raise protocol_error('BATCH.' + problem)
        algorithm = body['algorithm']
        hasher(algorithm)
        if fid in self.uploads or fid in self.batches:
            raise protocol_error('request id %d is already in use' % fid)
        if self.receiving is not None:
            raise protocol_error("BATCH %d before the COMMIT of batch %d: one batch's bytes at a time" % (fid, self.receiving.id))
        if len(self.batches) >= MAX_OPEN_BATCHES:
            raise protocol_error('more than %d BATCHes open at once in one session' % MAX_OPEN_BATCHES)
        b = Batch(fid, body['entries'], algorithm)
        # Directories now, in entry order (a parent before its contents); files as their bytes come.
        files_at = dict((f.index, f) for f in b.files)
        for i, e in enumerate(b.entries):
            if e['kind'] == 'dir':
                try:
                    under = failed_ancestor(e['path'], b.failed_dirs)
                    if under is not None:
                        raise under_failed(e['path'], under)
                    make_directory(e['path'])
                except Failure as failure:
                    b.dir_errors[i] = failure
                    b.failed_dirs[e['path']] = failure
            elif e['kind'] == 'file':
                under = failed_ancestor(e['path'], b.failed_dirs)
                if under is not None:
                    f = files_at[i]
                    f.error = under_failed(e['path'], under)
                    # Never created: its bytes are dropped as they come.
                    f.opened = True
        self.batches[fid] = b
        self.receiving = b
        self.skip_empty(b)

    def open_batch_file(self, b, f):
        """Creates f's temporary file new (O_EXCL|O_NOFOLLOW, 0600), sized at once: ZEROS leave holes."""
        if f.opened:
            return
        f.opened = True
        if b.open_files >= MAX_BATCH_OPEN_FILES:
            self.sync_early(b)
        path = f.entry['path']
        fds = []
        try:
            f.name = at_fresh_name(path, lambda n: fds.append(os.open(n, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)))
            fd = fds[0]
            try:
                os.ftruncate(fd, f.size)
                st = os.fstat(fd)
            except OSError as err:
                os.close(fd)
                discard(f.name)
                raise os_failure(err, path, 'destination')
            f.ident = (st.st_ino, st.st_dev)
            f.file = OpenFile(fd, path, f.size, True)
            b.open_files += 1
        except Failure as failure:
            f.error = failure

    def finish_batch_file(self, b, f):
        """Every byte of f is in: its mode and times through its descriptor, which stays open for the batch's sync."""
        if f.file is None or f.held or f.error is not None:
            return
        e = f.entry
        try:
            # Owner and attributes before the mode: chown clears set-id bits, an ACL's mask follows the mode.
            if has_meta(e):
                apply_meta(f.file.fd, e, e['path'])
            if e.get('mode') is not None:
                os.chmod(f.file.fd, e['mode'])
            if e.get('mtimeMs') is not None:
                mtime = e['mtimeMs'] * 1000000
                atime = e['atimeMs'] * 1000000 if e.get('atimeMs') is not None else mtime
                os.utime(f.file.fd, ns=(atime, mtime))
            f.held = True
        except (OSError, Failure) as err:
            f.error = err if isinstance(err, Failure) else os_failure(err, e['path'], 'destination')
            self.close_batch_file(b, f)
            discard(f.name)

    def close_batch_file(self, b, f):
        if f.file is not None:
            try:
                f.file.close()
            except OSError:
                pass
            f.file = None
            f.held = False
            b.open_files -= 1

    def sync_early(self, b):
        """Too many files of b open: the complete ones synced and closed now (a batch of thousands of tiny files)."""
        held = [f for f in b.files if f.held]
        if held:
            self.sync_file_system(os.path.dirname(held[0].entry['path']))

        def sync_file(f):
            try:
                os.fdatasync(f.file.fd)
            except OSError as err:
                return f, err
            return None

        for failed in self.syncs.map(sync_file, held):
            if failed is not None:
                f, err = failed
                f.error = os_failure(err, f.entry['path'], 'destination')
                discard(f.name)
        for f in held:
            self.close_batch_file(b, f)

    def sync_file_system(self, directory):
        """syncfs(2) of the file system holding directory (the C library's, else `sync -f`); False when that could not be done."""
        if not self.syncfs_works:
            return False
        if self.syncfs_call is not None:
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                return False
            try:
                return self.syncfs_call(fd) == 0
            finally:
                os.close(fd)
        if SYNC_PROGRAM is None:
            return False
        import subprocess
        try:
            p = subprocess.run([SYNC_PROGRAM, '-f', '--', directory], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError:
            self.syncfs_works = False
            return False
        import re
        if p.returncode != 0 and re.search(r'invalid option|unrecognized option|illegal option', p.stderr.decode('utf-8', 'replace'), re.I):
            self.syncfs_works = False
        return p.returncode == 0

    def skip_empty(self, b):
        """Files of no bytes at the cursor: created and finished as their turn comes."""
        while b.cursor < len(b.files) and b.files[b.cursor].size == 0:
            f = b.files[b.cursor]
            self.open_batch_file(b, f)
            self.finish_batch_file(b, f)
            b.cursor += 1

    def batch_bytes(self, b, view, n, what):
        if b is not self.receiving:
            raise protocol_error('%s for batch %d after its COMMIT' % (what, b.id))
        if b.received + n > b.total:
            raise protocol_error("%s for batch %d overruns its files' %d bytes" % (what, b.id, b.total))
        b.received += n
        at = 0
        while at < n:
            self.skip_empty(b)
            f = b.files[b.cursor]
            self.open_batch_file(b, f)
            k = min(f.size - f.received, n - at)
            if view is None:
                f.hasher.update(ZERO_CHUNK[:k])
            else:
                piece = view[at:at + k]
                f.hasher.update(piece)
                if f.error is None:
                    # Written here and now: small files, where a hand-off to the writer thread costs more than the write.
                    try:
                        pwrite_all(f.file.fd, piece, f.received)
                    except OSError as err:
                        f.error = os_failure(err, f.entry['path'], 'destination')
                        self.close_batch_file(b, f)
                        discard(f.name)
            f.received += k
            at += k
            if f.received == f.size:
                self.finish_batch_file(b, f)
                b.cursor += 1
        self.skip_empty(b)

    def commit(self, fid, body):
        hashes = body.get('srcHashes')
        if not isinstance(hashes, list) or len(hashes) > MAX_BATCH_ENTRIES or not all(h is None or (isinstance(h, str) and 0 < len(h) <= 128) for h in hashes):
            raise protocol_error('COMMIT.srcHashes must be a list of at most %d hashes (strings of at most 128 characters) or nils' % MAX_BATCH_ENTRIES)
        b = self.batches.get(fid)
        if b is None or b.committed:
            raise protocol_error('COMMIT for unknown batch %d' % fid)
        if b.received < b.total:
            raise protocol_error('COMMIT for batch %d before all its bytes (%d of %d)' % (fid, b.received, b.total))
        if len(hashes) != len(b.entries):
            raise protocol_error('COMMIT for batch %d has %d hashes for %d entries' % (fid, len(hashes), len(b.entries)))
        b.committed = True
        self.receiving = None
        self.skip_empty(b)
        self.committer.submit(self.commit_batch, b, hashes)

    def commit_batch(self, b, hashes):
        try:
            answer = {'results': fit_results(self.place_batch(b, hashes))}
        except Failure as failure:
            answer = failure
        except Exception as err:  # a bug here must still answer, not leave the client waiting
            answer = Failure('INTERNAL', 'batch %d: %s' % (b.id, err))
        # No longer open before the answer: the client sends its next BATCH as soon as it has it.
        self.batches.pop(b.id, None)
        if isinstance(answer, Failure):
            self.reply_error(b.id, answer)
        else:
            self.reply(b.id, answer)

    def place_batch(self, b, hashes):
        """Files whose hashes agree renamed over their paths, then links; each directory that got a name synced once."""
        results = [{'ok': True} for _ in b.entries]
        for i, failure in b.dir_errors.items():
            results[i] = {'ok': False, 'error': failure.body()}
        landed = {}

        def land(i):
            landed.setdefault(os.path.dirname(b.entries[i]['path']), []).append(i)

        renamed = []
        for f in b.files:
            i, path = f.index, f.entry['path']
            if f.error is not None:
                self.close_batch_file(b, f)
                if f.name is not None:
                    discard(f.name)
                results[i] = {'ok': False, 'error': f.error.body()}
                continue
            digest = f.hasher.digest()
            src = hashes[i]
            failure = None
            if src is None:
                failure = Failure('SOURCE_CHANGED', '%s was not written: the source file changed while it was read' % path, path)
            elif src != digest:
                failure = Failure('HASH_MISMATCH', '%s was not written: its bytes arrived with hash %s, sent with %s (corrupted on the way); send it again' % (path, digest, src), path)
            else:
                try:
                    rename_into(f.name, path, f.ident)
                    results[i] = {'ok': True, 'hash': digest}
                    renamed.append(f)
                    land(i)
                    continue
                except Failure as err:
                    failure = err
            self.close_batch_file(b, f)
            discard(f.name)
            results[i] = {'ok': False, 'error': failure.body()}
        # Links after the files: a hard link may name a file of this batch.
        for kind, place in (('symlink', place_symlink), ('hardlink', place_hardlink)):
            for i, e in enumerate(b.entries):
                if e['kind'] != kind:
                    continue
                try:
                    under = failed_ancestor(e['path'], b.failed_dirs)
                    if under is not None:
                        raise under_failed(e['path'], under)
                    place(e)
                    land(i)
                except Failure as failure:
                    results[i] = {'ok': False, 'error': failure.body()}

        # Durable at once: one write-back of the file system, then each file's fdatasync reports an error that hit it.
        held = [f for f in renamed if f.held]
        if held:
            self.sync_file_system(os.path.dirname(held[0].entry['path']))

        def sync_file(f):
            try:
                os.fdatasync(f.file.fd)
                return None
            except OSError as err:
                return f, os_failure(err, f.entry['path'], 'destination')

        for failed in self.syncs.map(sync_file, held):
            if failed is None:
                continue
            f, failure = failed
            results[f.index] = {'ok': False, 'error': failure.body()}
            # Its bytes may not be on the disk: its name goes, if it is still this file.
            try:
                st = os.lstat(f.entry['path'])
                if (st.st_ino, st.st_dev) == f.ident:
                    discard(f.entry['path'])
            except OSError:
                pass
        for f in renamed:
            self.close_batch_file(b, f)

        def sync(item):
            try:
                sync_directory(item[0])
                return None
            except Failure as failure:
                return item[1], failure

        for failed in self.syncs.map(sync, list(landed.items())):
            if failed is not None:
                for i in failed[0]:
                    results[i] = {'ok': False, 'error': failed[1].body()}
        return results

    def drop_batches(self):
        """Batches never committed (the client went away): their temporary files go."""
        for b in list(self.batches.values()):
            if b.committed:
                continue
            for f in b.files:
                self.close_batch_file(b, f)
                if f.name is not None:
                    discard(f.name)

    def read_chunk(self, f, offset, n):
        """n bytes at offset into the reusable buffer, after room for a frame header: a view of them."""
        view = self.read_view[HEADER_BYTES:HEADER_BYTES + n]
        got = 0
        try:
            while got < n:
                if hasattr(os, 'preadv'):
                    k = os.preadv(f.fd, [view[got:]], offset + got)
                else:
                    data = os.pread(f.fd, n - got, offset + got)
                    k = len(data)
                    view[got:got + k] = data
                if k == 0:
                    raise Failure('SOURCE_CHANGED', '%s ended at %d, before the end of the range: the file shrank' % (f.path, offset + got), f.path)
                got += k
        except OSError as err:
            raise os_failure(err, f.path, 'source' if not f.writable else 'destination')
        return view

    def stream(self, fid, f, offset, length, h, send):
        at = 0
        while at < length:
            n = min(CHUNK_BYTES, length - at)
            data = self.read_chunk(f, offset + at, n)
            h.update(data)
            at += n
            if not send:
                continue
            if data == ZERO_CHUNK[:n]:
                self.send_control(ZEROS, fid, {'length': n})
            else:
                HEADER.pack_into(self.read_buf, 0, DATA, 0, 0, fid, n)
                with self.out_lock:
                    write_all(1, self.read_view[:HEADER_BYTES + n])
        return {'bytes': length, 'hash': h.digest()}

    def read(self, fid, body):
        f = self.file_of(body, 'READ')
        offset, length = self.bounded(f, body, 'READ')
        return self.stream(fid, f, offset, length, hasher(body.get('algorithm')), True)

    def hash(self, fid, body):
        f = self.file_of(body, 'HASH')
        offset, length = self.bounded(f, body, 'HASH')
        h = hasher(body.get('algorithm'))
        # A file being written (--verify reads it back): after the writes queued so far.
        if f.writable:
            self.writer.settle(f)
        return self.stream(fid, f, offset, length, h, False)

    def copy_range(self, fid, body):
        """
        COPY_RANGE (--delta): a range of the old destination file into the open new one at the
        same offset. os.copy_file_range where there is one (the kernel copies, or shares the
        extents on a file system with reflinks), the bytes then hashed as the new file holds
        them; else read, hashed and written here.
        """
        f = self.file_of(body, 'COPY_RANGE')
        if not f.writable:
            raise Failure('PROTOCOL', 'COPY_RANGE into %s, which was opened read-only' % f.path, f.path)
        source = self.need_str(body, 'COPY_RANGE', 'from')
        offset, length = self.bounded(f, body, 'COPY_RANGE')
        h = hasher(body.get('algorithm'))
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            if err.errno == errno_names.ELOOP:
                raise Failure('DEST_CONFLICT', '%s is a symbolic link now: its ranges are not reused' % source, source)
            raise os_failure(err, source, 'source')
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise Failure('DEST_CONFLICT', '%s is not a regular file: its ranges are not reused' % source, source)
            if st.st_size < offset + length:
                raise Failure('DEST_REPLACED', '%s ended at %d bytes, within the range being reused: it changed' % (source, st.st_size), source)
            self.writer.settle(f)
            at = 0
            copier = getattr(os, 'copy_file_range', None)
            if copier is not None:
                try:
                    while at < length:
                        n = copier(fd, f.fd, length - at, offset + at, offset + at)
                        if n <= 0:
                            break
                        at += n
                except OSError as err:
                    if err.errno not in (errno_names.EXDEV, errno_names.ENOSYS, errno_names.EINVAL, errno_names.EOPNOTSUPP):
                        raise os_failure(err, f.path, 'destination')
                # What the kernel copied, hashed as the new file holds it.
                done = 0
                while done < at:
                    n = min(CHUNK_BYTES, at - done)
                    h.update(self.read_chunk(f, offset + done, n))
                    done += n
            while at < length:
                data = os.pread(fd, min(CHUNK_BYTES, length - at), offset + at)
                if not data:
                    raise Failure('DEST_REPLACED', '%s ended at %d bytes, within the range being reused: it changed' % (source, offset + at), source)
                h.update(data)
                try:
                    pwrite_all(f.fd, data, offset + at)
                except OSError as err:
                    raise os_failure(err, f.path, 'destination')
                at += len(data)
        finally:
            os.close(fd)
        return {'bytes': length, 'hash': h.digest()}

    def fsync(self, fid, body):
        f = self.file_of(body, 'FSYNC')
        self.writer.settle(f)
        try:
            os.fsync(f.fd)
        except OSError as err:
            raise os_failure(err, f.path, 'destination')
        return {}

    def close(self, fid, body):
        handle = self.need_int(body, 'CLOSE', 'handle')
        f = self.files.pop(handle, None)
        if f is None:
            raise Failure('PROTOCOL', 'unknown file handle %d' % handle)
        try:
            self.writer.settle(f)
        finally:
            f.close()
        return {}

    def stat(self, fid, body):
        path = self.need_str(body, 'STAT', 'path')
        try:
            st = os.stat(path)
        except OSError as err:
            self.reply_error(fid, os_failure(err, path, 'source'))
            return None
        return {'stat': stat_of(st)}

    def setstat(self, fid, body):
        # By handle: fchmod and futimes on the file itself, never a name that may point elsewhere by now.
        f = self.file_of(body, 'SETSTAT') if body.get('handle') is not None else None
        path = f.path if f is not None else self.need_str(body, 'SETSTAT', 'path')
        target = f.fd if f is not None else path
        problem = meta_problem(body, 'SETSTAT') or exact_problem(body.get('xattrsExact'), 'SETSTAT')
        if problem is not None:
            raise protocol_error(problem)
        exact = body.get('xattrsExact')
        if exact is not None and f is None:
            # An exact set goes to a directory or file by name: a link put in its place is refused, never followed by the chmod.
            try:
                if stat_mod.S_ISLNK(os.lstat(path).st_mode):
                    raise Failure('DEST_CONFLICT', '%s is a symbolic link now: its mode and attributes were not set; move it away and rerun' % path, path)
            except OSError as err:
                self.reply_error(fid, os_failure(err, path, 'destination'))
                return None
        if body.get('size') is not None:
            # --inplace: the file takes the copy's size before any range is written through this handle.
            if f is None or not f.writable:
                raise Failure('PROTOCOL', 'SETSTAT size of %s, which is not open for writing' % path, path)
            size = self.need_int(body, 'SETSTAT', 'size')
            self.writer.settle(f)
            try:
                os.ftruncate(f.fd, size)
            except OSError as err:
                self.reply_error(fid, os_failure(err, path, 'destination'))
                return None
            f.size = size
        if has_meta(body) or exact is not None:
            try:
                apply_meta(target, body, path, exact=exact)
            except Failure as failure:
                self.reply_error(fid, failure)
                return None
        mode = self.need_int(body, 'SETSTAT', 'mode') if body.get('mode') is not None else None
        mtime = self.need_int(body, 'SETSTAT', 'mtimeMs') * 1000000 if body.get('mtimeMs') is not None else None
        atime = self.need_int(body, 'SETSTAT', 'atimeMs') * 1000000 if body.get('atimeMs') is not None else mtime
        if mode is None and mtime is None:
            return {}
        # By name (a tree's directory, a big file set again): through a descriptor opened without
        # following a link at the name, so the object checked is the one changed.
        fd = f.fd if f is not None else None
        try:
            if fd is None:
                fd = open_no_follow(path)
            if mode is not None:
                os.chmod(fd, mode)
            if mtime is not None:
                os.utime(fd, ns=(atime, mtime))
        except Failure as failure:
            self.reply_error(fid, failure)
            return None
        except OSError as err:
            self.reply_error(fid, os_failure(err, path, 'destination'))
            return None
        finally:
            if f is None and fd is not None:
                os.close(fd)
        return {}

    def rename(self, fid, body):
        src = self.need_str(body, 'RENAME', 'from')
        dst = self.need_str(body, 'RENAME', 'to')
        f = self.file_of(body, 'RENAME') if body.get('handle') is not None else None
        # With a handle: `from` must be that file just before the rename and `to` just after
        # (Linux has no rename-if-same-inode: a swap in between is found, not prevented).
        if f is not None:
            same_as(f.fd, src, 'before the rename')
        try:
            os.rename(src, dst)
        except OSError as err:
            self.reply_error(fid, os_failure(err, dst, 'destination'))
            return None
        if f is not None:
            same_as(f.fd, dst, 'after the rename')
        return {}

    def unlink(self, fid, body):
        path = self.need_str(body, 'UNLINK', 'path')
        try:
            if body.get('dir') is True:
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as err:
            if err.errno != errno_names.ENOENT:
                self.reply_error(fid, os_failure(err, path, 'destination'))
                return None
        return {}


class Input(object):
    """stdin read into one growing buffer; frames are taken whole from it."""

    def __init__(self):
        self.buf = bytearray(4 * CHUNK_BYTES)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def fill(self, need):
        """At least `need` unread bytes in the buffer; False at end of input."""
        while self.end - self.start < need:
            if len(self.buf) - self.start < need:
                have = self.end - self.start
                if need > len(self.buf):
                    grown = bytearray(need + CHUNK_BYTES)
                    grown[:have] = self.view[self.start:self.end]
                    self.view.release()
                    self.buf = grown
                    self.view = memoryview(self.buf)
                else:
                    self.view[:have] = self.view[self.start:self.end]
                self.start = 0
                self.end = have
            n = os.readv(0, [self.view[self.end:]])
            if n == 0:
                return False
            self.end += n
        return True

    def take(self, n):
        v = self.view[self.start:self.start + n]
        self.start += n
        return v


def raise_open_files():
    """The soft limit of open files up to the hard one (as Node does at start): a batch holds up to MAX_BATCH_OPEN_FILES."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max(soft, 65536) if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def main():
    raise_open_files()
    session = Session(grow_pipes())
    inp = Input()
    while True:
        if not inp.fill(HEADER_BYTES):
            break
        ftype, flags, reserved, fid, length = HEADER.unpack(inp.take(HEADER_BYTES))
        try:
            if ftype not in NAMES:
                raise protocol_error('unknown frame type %d' % ftype)
            if flags != 0 or reserved != 0:
                raise protocol_error('reserved header bits set in %s frame' % NAMES[ftype])
            limit = MAX_DATA_FRAME_BYTES if ftype == DATA else MAX_BATCH_BODY_BYTES if ftype in (BATCH, COMMIT, READ_BATCH, SETSTAT) else MAX_CONTROL_BYTES
            if length > limit:
                raise protocol_error('%s frame body of %d bytes exceeds %d' % (NAMES[ftype], length, limit))
            if ftype != DATA and length == 0:
                raise protocol_error('%s frame has an empty body' % NAMES[ftype])
            if not inp.fill(length):
                break
            body = inp.take(length)
            if ftype == DATA:
                session.on_data(fid, body)
            else:
                session.on_control(ftype, fid, unpack(body))
        except Failure as failure:
            # A malformed stream cannot be resynchronised: say why and stop.
            session.reply_error(0, failure)
            break
    # Batches still committing finish first (a session that committed none made no pool).
    if session._committer is not None:
        session._committer.shutdown(wait=True)
    try:
        session.drop_batches()
    except Failure:
        pass
    for f in session.files.values():
        try:
            session.writer.settle(f)
        except Failure:
            pass
        f.close()


try:
    main()
except BrokenPipeError:
    pass
except KeyboardInterrupt:
    pass
