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
