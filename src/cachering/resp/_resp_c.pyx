# cython: language_level=3, boundscheck=False, wraparound=False
"""RESP command encoding in C: ``pack_command(args) -> bytes``.

Gives the same bytes as ``hiredis.pack_command`` (the fallback when this module is not
built) and accepts the same argument types: ``bytes``, ``str`` (UTF-8), ``int``,
``float`` (``repr``) and ``memoryview``. It measures every argument first and writes
them all into one preallocated ``bytes`` object, which is several times faster for the
long ``EVALSHA`` commands that carry a batch of keys and values.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.string cimport memcpy

__all__ = ["pack_command"]


cdef inline Py_ssize_t _digits(Py_ssize_t n) noexcept:
    cdef Py_ssize_t d = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


cdef inline char* _header(char* p, char lead, Py_ssize_t n) noexcept:
    """Write ``<lead><n>\\r\\n`` at ``p``; returns the position after it."""
    cdef Py_ssize_t d = _digits(n)
    cdef Py_ssize_t i
    p[0] = lead
    for i in range(d, 0, -1):
        p[i] = <char>(48 + n % 10)
        n //= 10
    p[d + 1] = 13
    p[d + 2] = 10
    return p + d + 3


cdef inline bytes _as_bytes(object arg):
    cdef type kind = type(arg)
    if kind is bytes:
        return <bytes>arg
    if kind is str:
        return PyUnicode_AsUTF8String(arg)
    if kind is int:
        return str(arg).encode()
    if kind is float:
        return repr(arg).encode()
    if kind is memoryview:
        return bytes(arg)
    raise TypeError("A tuple item must be str, int, float or bytes.")


def pack_command(tuple args):
    """One command (a tuple of arguments) as RESP bytes."""
    cdef Py_ssize_t count = len(args)
    cdef Py_ssize_t i, n
    cdef Py_ssize_t total = 3 + _digits(count)
    cdef list parts = [None] * count
    cdef bytes part
    for i in range(count):
        part = _as_bytes(args[i])
        parts[i] = part
        n = PyBytes_GET_SIZE(part)
        total += n + 5 + _digits(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    p = _header(p, 42, count)  # '*'
    for i in range(count):
        part = <bytes>parts[i]
        n = PyBytes_GET_SIZE(part)
        p = _header(p, 36, n)  # '$'
        memcpy(p, PyBytes_AS_STRING(part), n)
        p[n] = 13
        p[n + 1] = 10
        p += n + 2
    return out


# -- the reply guard (twin of _guard_py.ReplyGuard; see that module for the rules) ----------

class ReplyTooLarge(ValueError):
    """A reply announced or sent more than the guard's limits allow."""


cdef int _MAX_DEPTH = 64


cdef class ReplyGuard:
    """Checks a stream of RESP replies before hiredis parses them (see ``_guard_py``)."""

    cdef public long long max_bulk, max_elements, max_bytes
    cdef long long _skip, _reply
    cdef long long _stack[64]
    cdef int _depth
    cdef bytes _line

    def __init__(self, long long max_bulk, long long max_elements, long long max_bytes):
        self.max_bulk = max_bulk
        self.max_elements = max_elements
        self.max_bytes = max_bytes
        self._skip = 0
        self._reply = 0
        self._depth = 0
        self._line = b""

    def feed(self, bytes data not None):
        """Scan ``data`` (the next bytes from the node)."""
        if PyBytes_GET_SIZE(self._line):
            self._reply -= PyBytes_GET_SIZE(self._line)
            data = self._line + data
            self._line = b""
        cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t pos = 0, nl
        cdef long long take
        self._reply += end
        if self._reply > self.max_bytes:
            raise ReplyTooLarge(f"reply over {self.max_bytes} bytes")
        while pos < end:
            if self._skip:
                take = self._skip if self._skip < end - pos else end - pos
                pos += take
                self._skip -= take
                if not self._skip:
                    self._done(end - pos)
                continue
            nl = pos
            while nl + 1 < end and not (buf[nl] == 13 and buf[nl + 1] == 10):
                nl += 1
            if nl + 1 >= end:
                if end - pos > 64 + self.max_bulk:
                    raise ReplyTooLarge("header line too long")
                self._line = data[pos:]
                return
            self._header(buf, pos, nl, end - nl - 2)
            pos = nl + 2

    cdef int _header(self, const unsigned char* buf, Py_ssize_t pos, Py_ssize_t nl,
                     Py_ssize_t left) except -1:
        if nl == pos:
            raise ValueError("empty RESP header")
        cdef unsigned char kind = buf[pos]
        if kind in b"+-:,#_(":
            if nl - pos > self.max_bulk:
                raise ReplyTooLarge(f"line over {self.max_bulk} bytes")
            self._done(left)
            return 0
        cdef long long size = 0
        cdef bint negative = False
        cdef Py_ssize_t i = pos + 1
        if i < nl and buf[i] == 45:  # '-'
            negative = True
            i += 1
        if i == nl or nl - i > 18:
            raise ValueError("bad RESP length")
        while i < nl:
            if not 48 <= buf[i] <= 57:
                raise ValueError("bad RESP length")
            size = size * 10 + (buf[i] - 48)
            i += 1
        if negative:
            size = -size
        if kind in b"$=!":
            if size > self.max_bulk:
                raise ReplyTooLarge(f"bulk string of {size} bytes, limit {self.max_bulk}")
            if size < 0:
                self._done(left)
            else:
                self._skip = size + 2
            return 0
        if kind == 37:  # '%' map: key and value per entry
            size *= 2
        elif kind not in b"*~>|":
            raise ValueError(f"unknown RESP type byte {kind}")
        if size > self.max_elements:
            raise ReplyTooLarge(f"aggregate of {size} elements, limit {self.max_elements}")
        if size <= 0:
            self._done(left)
        else:
            if self._depth >= _MAX_DEPTH:
                raise ReplyTooLarge(f"replies nested deeper than {_MAX_DEPTH}")
            self._stack[self._depth] = size
            self._depth += 1
        return 0

    cdef inline void _done(self, Py_ssize_t left) noexcept:
        while self._depth:
            self._stack[self._depth - 1] -= 1
            if self._stack[self._depth - 1]:
                return
            self._depth -= 1
        self._reply = left
