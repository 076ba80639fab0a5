# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled consistent-hash ring; answers identically to ``cachering._ring_py``.

Layout: a sorted ``uint32`` point array, a parallel ``uint16`` owner array and a bucket
index on the top bits of the hash (at most one uint32 per four points), so a ring costs
at most 8 bytes per point. Node validation, point counts and ``repr`` come from the
Python twin so that both raise the same errors.

The module is longer than the usual ~600 lines on purpose: the hash functions (MurmurHash3,
an unrolled MD5 and an eight-lane SIMD MD5 for batches) must be inlined into the batch
loops, which Cython does only within one module.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_Check
from libc.math cimport fabs, sin
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy, memset

from ._ring_py import _check_n, _check_options, _check_seed, _format_repr, _parse_nodes
from ._ring_py import _point_counts
from .errors import EmptyRingError

__all__ = ["Ring", "murmur3_32"]

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    bint PyUnicode_IS_COMPACT_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    object PySequence_Fast(object, const char*)
    Py_ssize_t PySequence_Fast_GET_SIZE(object)
    PyObject** PySequence_Fast_ITEMS(object)

DEF MURMUR3 = 0
DEF KETAMA = 1

# ---- MurmurHash3 x86_32 -------------------------------------------------------------

cdef inline uint32_t _rotl(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    # Byte by byte so big-endian hosts agree; compilers turn this into one load.
    return ((<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint32_t _murmur3(const uint8_t* data, Py_ssize_t n, uint32_t seed) noexcept nogil:
    cdef uint32_t h = seed, k
    cdef Py_ssize_t nblocks = n >> 2, i
    for i in range(nblocks):
        k = _le32(data + 4 * i)
        k = _rotl(k * 0xCC9E2D51U, 15) * 0x1B873593U
        h = _rotl(h ^ k, 13) * 5 + 0xE6546B64U
    cdef const uint8_t* tail = data + 4 * nblocks
    k = 0
    cdef int rest = n & 3
    if rest == 3:
        k ^= (<uint32_t>tail[2]) << 16
    if rest >= 2:
        k ^= (<uint32_t>tail[1]) << 8
    if rest >= 1:
        k ^= tail[0]
        h ^= _rotl(k * 0xCC9E2D51U, 15) * 0x1B873593U
    h ^= <uint32_t>n
    h ^= h >> 16
    h *= 0x85EBCA6BU
    h ^= h >> 13
    h *= 0xC2B2AE35U
    return h ^ (h >> 16)


# ---- MD5 (RFC 1321), only what ketama needs --------------------------------------------

cdef uint32_t _MD5_T[64]
cdef int _MD5_S[64]
cdef int _MD5_G[64]


cdef void _md5_init_tables() noexcept:
    cdef int i
    cdef int shifts[16]
    shifts[:] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21]
    for i in range(64):
        # RFC 1321 defines T[i] as the integer part of 2**32 * |sin(i + 1)|.
        _MD5_T[i] = <uint32_t>(fabs(sin(i + 1)) * 4294967296.0)
        _MD5_S[i] = shifts[(i // 16) * 4 + (i & 3)]
        if i < 16:
            _MD5_G[i] = i
        elif i < 32:
            _MD5_G[i] = (5 * i + 1) & 15
        elif i < 48:
            _MD5_G[i] = (3 * i + 5) & 15
        else:
            _MD5_G[i] = (7 * i) & 15


_md5_init_tables()


cdef inline uint32_t _md5_F(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t mt,
                            int s) noexcept nogil:
    return b + _rotl(a + ((b & c) | (~b & d)) + mt, s)


cdef inline uint32_t _md5_G(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t mt,
                            int s) noexcept nogil:
    return b + _rotl(a + ((b & d) | (c & ~d)) + mt, s)


cdef inline uint32_t _md5_H(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t mt,
                            int s) noexcept nogil:
    return b + _rotl(a + (b ^ c ^ d) + mt, s)


cdef inline uint32_t _md5_I(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t mt,
                            int s) noexcept nogil:
    return b + _rotl(a + (c ^ (b | ~d)) + mt, s)


cdef inline void _md5_block(uint32_t* state, const uint8_t* block) noexcept nogil:
    # Fully unrolled (message index and shift fixed per step): about twice as fast as a
    # loop that picks the round function and shift at run time.
    cdef uint32_t m[16]
    cdef uint32_t a = state[0], b = state[1], c = state[2], d = state[3]
    cdef int i
    for i in range(16):
        m[i] = _le32(block + 4 * i)
    a = _md5_F(a, b, c, d, m[0] + _MD5_T[0], 7)
    d = _md5_F(d, a, b, c, m[1] + _MD5_T[1], 12)
    c = _md5_F(c, d, a, b, m[2] + _MD5_T[2], 17)
    b = _md5_F(b, c, d, a, m[3] + _MD5_T[3], 22)
    a = _md5_F(a, b, c, d, m[4] + _MD5_T[4], 7)
    d = _md5_F(d, a, b, c, m[5] + _MD5_T[5], 12)
    c = _md5_F(c, d, a, b, m[6] + _MD5_T[6], 17)
    b = _md5_F(b, c, d, a, m[7] + _MD5_T[7], 22)
    a = _md5_F(a, b, c, d, m[8] + _MD5_T[8], 7)
    d = _md5_F(d, a, b, c, m[9] + _MD5_T[9], 12)
    c = _md5_F(c, d, a, b, m[10] + _MD5_T[10], 17)
    b = _md5_F(b, c, d, a, m[11] + _MD5_T[11], 22)
    a = _md5_F(a, b, c, d, m[12] + _MD5_T[12], 7)
    d = _md5_F(d, a, b, c, m[13] + _MD5_T[13], 12)
    c = _md5_F(c, d, a, b, m[14] + _MD5_T[14], 17)
    b = _md5_F(b, c, d, a, m[15] + _MD5_T[15], 22)
    a = _md5_G(a, b, c, d, m[1] + _MD5_T[16], 5)
    d = _md5_G(d, a, b, c, m[6] + _MD5_T[17], 9)
    c = _md5_G(c, d, a, b, m[11] + _MD5_T[18], 14)
    b = _md5_G(b, c, d, a, m[0] + _MD5_T[19], 20)
    a = _md5_G(a, b, c, d, m[5] + _MD5_T[20], 5)
    d = _md5_G(d, a, b, c, m[10] + _MD5_T[21], 9)
    c = _md5_G(c, d, a, b, m[15] + _MD5_T[22], 14)
    b = _md5_G(b, c, d, a, m[4] + _MD5_T[23], 20)
    a = _md5_G(a, b, c, d, m[9] + _MD5_T[24], 5)
    d = _md5_G(d, a, b, c, m[14] + _MD5_T[25], 9)
    c = _md5_G(c, d, a, b, m[3] + _MD5_T[26], 14)
    b = _md5_G(b, c, d, a, m[8] + _MD5_T[27], 20)
    a = _md5_G(a, b, c, d, m[13] + _MD5_T[28], 5)
    d = _md5_G(d, a, b, c, m[2] + _MD5_T[29], 9)
    c = _md5_G(c, d, a, b, m[7] + _MD5_T[30], 14)
    b = _md5_G(b, c, d, a, m[12] + _MD5_T[31], 20)
    a = _md5_H(a, b, c, d, m[5] + _MD5_T[32], 4)
    d = _md5_H(d, a, b, c, m[8] + _MD5_T[33], 11)
    c = _md5_H(c, d, a, b, m[11] + _MD5_T[34], 16)
    b = _md5_H(b, c, d, a, m[14] + _MD5_T[35], 23)
    a = _md5_H(a, b, c, d, m[1] + _MD5_T[36], 4)
    d = _md5_H(d, a, b, c, m[4] + _MD5_T[37], 11)
    c = _md5_H(c, d, a, b, m[7] + _MD5_T[38], 16)
    b = _md5_H(b, c, d, a, m[10] + _MD5_T[39], 23)
    a = _md5_H(a, b, c, d, m[13] + _MD5_T[40], 4)
    d = _md5_H(d, a, b, c, m[0] + _MD5_T[41], 11)
    c = _md5_H(c, d, a, b, m[3] + _MD5_T[42], 16)
    b = _md5_H(b, c, d, a, m[6] + _MD5_T[43], 23)
    a = _md5_H(a, b, c, d, m[9] + _MD5_T[44], 4)
    d = _md5_H(d, a, b, c, m[12] + _MD5_T[45], 11)
    c = _md5_H(c, d, a, b, m[15] + _MD5_T[46], 16)
    b = _md5_H(b, c, d, a, m[2] + _MD5_T[47], 23)
    a = _md5_I(a, b, c, d, m[0] + _MD5_T[48], 6)
    d = _md5_I(d, a, b, c, m[7] + _MD5_T[49], 10)
    c = _md5_I(c, d, a, b, m[14] + _MD5_T[50], 15)
    b = _md5_I(b, c, d, a, m[5] + _MD5_T[51], 21)
    a = _md5_I(a, b, c, d, m[12] + _MD5_T[52], 6)
    d = _md5_I(d, a, b, c, m[3] + _MD5_T[53], 10)
    c = _md5_I(c, d, a, b, m[10] + _MD5_T[54], 15)
    b = _md5_I(b, c, d, a, m[1] + _MD5_T[55], 21)
    a = _md5_I(a, b, c, d, m[8] + _MD5_T[56], 6)
    d = _md5_I(d, a, b, c, m[15] + _MD5_T[57], 10)
    c = _md5_I(c, d, a, b, m[6] + _MD5_T[58], 15)
    b = _md5_I(b, c, d, a, m[13] + _MD5_T[59], 21)
    a = _md5_I(a, b, c, d, m[4] + _MD5_T[60], 6)
    d = _md5_I(d, a, b, c, m[11] + _MD5_T[61], 10)
    c = _md5_I(c, d, a, b, m[2] + _MD5_T[62], 15)
    b = _md5_I(b, c, d, a, m[9] + _MD5_T[63], 21)
    state[0] += a
    state[1] += b
    state[2] += c
    state[3] += d


cdef void _md5(const uint8_t* data, Py_ssize_t n, uint32_t* out) noexcept nogil:
    cdef uint8_t last[128]
    cdef Py_ssize_t full = n & ~63, rest = n - full, i, pad
    cdef uint64_t bits = (<uint64_t>n) << 3
    out[0] = 0x67452301U
    out[1] = 0xEFCDAB89U
    out[2] = 0x98BADCFEU
    out[3] = 0x10325476U
    i = 0
    while i < full:
        _md5_block(out, data + i)
        i += 64
    memcpy(last, data + full, rest)
    last[rest] = 0x80
    pad = 64 if rest < 56 else 128
    memset(last + rest + 1, 0, pad - rest - 1)
    for i in range(8):
        last[pad - 8 + i] = <uint8_t>(bits >> (8 * i))
    _md5_block(out, last)
    if pad == 128:
        _md5_block(out, last + 64)


cdef extern from *:
    """
    /* Eight MD5 compressions side by side: two chains of four SIMD lanes with GCC/Clang
       vector extensions (SSE2/NEON), a plain lane loop elsewhere. MD5 is a serial chain
       of 64 dependent steps, so one message at a time leaves most of the CPU idle. */
    #include <string.h>
    #if defined(__GNUC__) || defined(__clang__)
    typedef uint32_t cr_md5_v4 __attribute__((vector_size(16)));
    #define CR_MD5_ROUND(a, b, c, d, w)                              \
        if (i < 16) f = (b & c) | (~b & d);                            \
        else if (i < 32) f = (b & d) | (c & ~d);                       \
        else if (i < 48) f = b ^ c ^ d;                                \
        else f = c ^ (b | ~d);                                         \
        t = a + f + T[i] + w;                                          \
        t = (t << S[i]) | (t >> (32 - S[i]));                          \
        a = d; d = c; c = b; b = b + t;
    static void cr_md5_x8(const uint32_t *m, const uint32_t *T, const int *S,
                          const int *G, uint32_t *out) {
        const cr_md5_v4 A = {0x67452301u, 0x67452301u, 0x67452301u, 0x67452301u};
        const cr_md5_v4 B = {0xEFCDAB89u, 0xEFCDAB89u, 0xEFCDAB89u, 0xEFCDAB89u};
        const cr_md5_v4 C = {0x98BADCFEu, 0x98BADCFEu, 0x98BADCFEu, 0x98BADCFEu};
        const cr_md5_v4 D = {0x10325476u, 0x10325476u, 0x10325476u, 0x10325476u};
        cr_md5_v4 a0 = A, b0 = B, c0 = C, d0 = D, a1 = A, b1 = B, c1 = C, d1 = D;
        cr_md5_v4 f, t, w0, w1;
        int i;
        for (i = 0; i < 64; i++) {
            memcpy(&w0, m + 8 * G[i], sizeof w0);
            memcpy(&w1, m + 8 * G[i] + 4, sizeof w1);
            CR_MD5_ROUND(a0, b0, c0, d0, w0)
            CR_MD5_ROUND(a1, b1, c1, d1, w1)
        }
        a0 += A;
        a1 += A;
        memcpy(out, &a0, sizeof a0);
        memcpy(out + 4, &a1, sizeof a1);
    }
    #else
    static void cr_md5_x8(const uint32_t *m, const uint32_t *T, const int *S,
                          const int *G, uint32_t *out) {
        int l, i;
        for (l = 0; l < 8; l++) {
            uint32_t a = 0x67452301u, b = 0xEFCDAB89u, c = 0x98BADCFEu, d = 0x10325476u;
            uint32_t f, t;
            for (i = 0; i < 64; i++) {
                if (i < 16) f = (b & c) | (~b & d);
                else if (i < 32) f = (b & d) | (c & ~d);
                else if (i < 48) f = b ^ c ^ d;
                else f = c ^ (b | ~d);
                t = a + f + T[i] + m[8 * G[i] + l];
                t = (t << S[i]) | (t >> (32 - S[i]));
                a = d; d = c; c = b; b = b + t;
            }
            out[l] = a + 0x67452301u;
        }
    }
    #endif
    """
    void cr_md5_x8(const uint32_t* m, const uint32_t* T, const int* S, const int* G,
                   uint32_t* out) noexcept nogil


cdef void _md5_word0_x8(const uint8_t** data, const Py_ssize_t* lens,
                       uint32_t* out) noexcept nogil:
    """First digest word of eight single-block messages (each shorter than 56 bytes)."""
    cdef uint8_t block[64]
    cdef uint32_t m[128]  # lane-interleaved: word g of lane l at m[8 * g + l]
    cdef uint32_t bits
    cdef int l, g
    for l in range(8):
        memset(block, 0, 64)
        memcpy(block, data[l], lens[l])
        block[lens[l]] = 0x80
        bits = <uint32_t>(lens[l] << 3)
        block[56] = <uint8_t>bits
        block[57] = <uint8_t>(bits >> 8)
        for g in range(16):
            m[g * 8 + l] = _le32(block + 4 * g)
    cr_md5_x8(m, _MD5_T, _MD5_S, _MD5_G, out)


# ---- keys ---------------------------------------------------------------------------

cdef inline uint32_t _hash_bytes(int mode, uint32_t seed, const uint8_t* data,
                                 Py_ssize_t n) noexcept nogil:
    cdef uint32_t digest[4]
    if mode == MURMUR3:
        return _murmur3(data, n, seed)
    _md5(data, n, digest)
    return digest[0]


cdef uint32_t _hash_other(int mode, uint32_t seed, object key) except? 0xFFFFFFFFU:
    """Hash a bytes-like key that is neither str nor bytes (buffer protocol)."""
    cdef Py_buffer view
    cdef uint32_t h
    try:
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    except BufferError:  # e.g. a non-contiguous memoryview: hash a contiguous copy
        data = memoryview(key).tobytes()
        return _hash_bytes(mode, seed, <const uint8_t*>PyBytes_AS_STRING(data),
                           PyBytes_GET_SIZE(data))
    except TypeError:
        raise TypeError(
            f"ring keys must be str or bytes-like, not {type(key).__name__}"
        ) from None
    try:
        h = _hash_bytes(mode, seed, <const uint8_t*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return h


cdef inline uint32_t _hash_key(int mode, uint32_t seed, object key) except? 0xFFFFFFFFU:
    cdef Py_ssize_t n
    cdef const char* buf
    if PyUnicode_Check(key):
        if PyUnicode_IS_COMPACT_ASCII(key):  # ASCII is its own UTF-8: skip the call
            return _hash_bytes(mode, seed, <const uint8_t*>PyUnicode_DATA(key),
                               PyUnicode_GET_LENGTH(key))
        buf = PyUnicode_AsUTF8AndSize(key, &n)
        return _hash_bytes(mode, seed, <const uint8_t*>buf, n)
    if PyBytes_Check(key):
        return _hash_bytes(mode, seed, <const uint8_t*>PyBytes_AS_STRING(key),
                           PyBytes_GET_SIZE(key))
    return _hash_other(mode, seed, key)


cdef int _gather8(PyObject** items, const uint8_t** ptrs, Py_ssize_t* lens) except -1:
    """Point at eight str/bytes keys that fit one MD5 block; 0 if any does not."""
    cdef int j
    cdef PyObject* key
    for j in range(8):
        key = items[j]
        if PyUnicode_Check(<object>key):
            if PyUnicode_IS_COMPACT_ASCII(<object>key):
                ptrs[j] = <const uint8_t*>PyUnicode_DATA(<object>key)
                lens[j] = PyUnicode_GET_LENGTH(<object>key)
            else:
                ptrs[j] = <const uint8_t*>PyUnicode_AsUTF8AndSize(<object>key, &lens[j])
        elif PyBytes_Check(<object>key):
            ptrs[j] = <const uint8_t*>PyBytes_AS_STRING(<object>key)
            lens[j] = PyBytes_GET_SIZE(<object>key)
        else:
            return 0
        if lens[j] >= 56:
            return 0
    return 1


def murmur3_32(data, seed=0):
    """MurmurHash3 x86_32 of ``data`` (str is hashed as UTF-8), as an unsigned int.

    >>> murmur3_32("foo")
    4138058784
    """
    cdef uint32_t s = _check_seed(seed)
    if not isinstance(data, (str, bytes)):
        try:
            memoryview(data).release()
        except TypeError:
            raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}") from None
    return _hash_key(MURMUR3, s, data)


# ---- ring build ---------------------------------------------------------------------

cdef int _cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


cdef int _sort_u64(uint64_t* keys, Py_ssize_t n) except -1:
    """Sort 48-bit keys: qsort when small, else an LSD radix sort of three 16-bit digits."""
    cdef uint64_t* tmp
    cdef uint32_t* counts
    cdef Py_ssize_t i, total, c
    cdef int shift
    cdef uint64_t* src
    cdef uint64_t* dst
    cdef uint64_t* swap
    if n < 4096:
        qsort(keys, n, sizeof(uint64_t), _cmp_u64)
        return 0
    tmp = <uint64_t*>malloc(n * sizeof(uint64_t))
    counts = <uint32_t*>malloc(65536 * sizeof(uint32_t))
    if tmp == NULL or counts == NULL:
        free(tmp)
        free(counts)
        raise MemoryError()
    src, dst = keys, tmp
    with nogil:
        for shift in range(0, 48, 16):
            memset(counts, 0, 65536 * sizeof(uint32_t))
            for i in range(n):
                counts[(src[i] >> shift) & 0xFFFF] += 1
            total = 0
            for i in range(65536):
                c = counts[i]
                counts[i] = <uint32_t>total
                total += c
            for i in range(n):
                c = (src[i] >> shift) & 0xFFFF
                dst[counts[c]] = src[i]
                counts[c] += 1
            swap = src
            src = dst
            dst = swap
    if src != keys:  # three passes: the result sits in tmp
        memcpy(keys, src, n * sizeof(uint64_t))
    free(tmp)
    free(counts)
    return 0


cdef Py_ssize_t _fill_name_point(uint8_t* buf, Py_ssize_t prefix, Py_ssize_t i) noexcept nogil:
    """Append the decimal ``i`` after ``name-`` already in ``buf``; return the length."""
    cdef uint8_t digits[24]
    cdef int nd = 0
    if i == 0:
        digits[0] = 48
        nd = 1
    while i > 0:
        digits[nd] = <uint8_t>(48 + i % 10)
        i //= 10
        nd += 1
    cdef int j
    for j in range(nd):
        buf[prefix + j] = digits[nd - 1 - j]
    return prefix + nd


def _rebuild(weights, vnodes, hash, seed):
    return Ring(weights, vnodes=vnodes, hash=hash, seed=seed)


cdef class Ring:
    """An immutable consistent-hash ring of named nodes (compiled; see ``_ring_py.Ring``).

    >>> ring = Ring(["a", "b", "c"])
    >>> ring.lookup("user:42") in ring.nodes
    True
    """

    cdef uint32_t* _points
    cdef uint16_t* _owners
    cdef uint32_t* _buckets
    cdef Py_ssize_t _npoints
    cdef int _shift
    cdef int _mode
    cdef uint32_t _seed
    cdef int _reachable
    cdef tuple _names
    cdef dict _weights
    cdef int _vnodes
    cdef str _hash

    def __cinit__(self):
        self._points = NULL
        self._owners = NULL
        self._buckets = NULL

    def __dealloc__(self):
        free(self._points)
        free(self._owners)
        free(self._buckets)

    def __init__(self, nodes=(), *, vnodes=160, hash="murmur3", seed=0):
        if self._points != NULL:
            raise TypeError("Ring is immutable; build a new one")
        weights = _parse_nodes(nodes)
        vnodes, hash, seed = _check_options(vnodes, hash, seed)
        counts = _point_counts(weights, vnodes, hash)
        self._weights = weights
        self._names = tuple(weights)
        self._vnodes = vnodes
        self._hash = hash
        self._seed = seed
        self._mode = MURMUR3 if hash == "murmur3" else KETAMA
        self._build(counts)

    cdef int _build(self, list counts) except -1:
        cdef Py_ssize_t per = 1 if self._mode == MURMUR3 else 4
        cdef Py_ssize_t total = 0, r, i, k = 0, count, prefix, length
        cdef Py_ssize_t nn = len(self._names)
        cdef uint64_t rank
        cdef uint32_t digest[4]
        cdef uint8_t* buf
        cdef const char* name_utf8
        cdef uint64_t* keys
        cdef int j
        for count in counts:
            total += count * per
        # Also reused below as one flag per node, hence at least nn entries.
        keys = <uint64_t*>malloc(max(total, nn, 1) * sizeof(uint64_t))
        buf = <uint8_t*>malloc(max(len(n.encode()) for n in self._names) + 32 if nn else 1)
        if keys == NULL or buf == NULL:
            free(keys)
            free(buf)
            raise MemoryError()
        try:
            for r in range(nn):
                name_utf8 = PyUnicode_AsUTF8AndSize(self._names[r], &prefix)
                memcpy(buf, name_utf8, prefix)
                buf[prefix] = 45  # "-"
                count = counts[r]
                if self._mode == MURMUR3:
                    rank = <uint64_t>r
                    for i in range(count):
                        length = _fill_name_point(buf, prefix + 1, i)
                        keys[k] = ((<uint64_t>_murmur3(buf, length, self._seed)) << 16) | rank
                        k += 1
                else:
                    # Descending rank, so the name sorting last wins a tie (see _ring_py).
                    rank = <uint64_t>(nn - 1 - r)
                    for i in range(count):
                        length = _fill_name_point(buf, prefix + 1, i)
                        _md5(buf, length, digest)
                        for j in range(4):
                            keys[k] = ((<uint64_t>digest[j]) << 16) | rank
                            k += 1
            _sort_u64(keys, total)
            self._npoints = total
            self._points = <uint32_t*>malloc((total if total else 1) * sizeof(uint32_t))
            self._owners = <uint16_t*>malloc((total if total else 1) * sizeof(uint16_t))
            if self._points == NULL or self._owners == NULL:
                raise MemoryError()
            for i in range(total):
                self._points[i] = <uint32_t>(keys[i] >> 16)
                if self._mode == MURMUR3:
                    self._owners[i] = <uint16_t>(keys[i] & 0xFFFF)
                else:
                    self._owners[i] = <uint16_t>(nn - 1 - <Py_ssize_t>(keys[i] & 0xFFFF))
            # Reuse the key buffer as "has a point" flags, to count reachable nodes.
            memset(keys, 0, nn * sizeof(uint64_t))
            self._reachable = 0
            for i in range(total):
                if keys[self._owners[i]] == 0:
                    keys[self._owners[i]] = 1
                    self._reachable += 1
        finally:
            free(keys)
            free(buf)
        self._build_buckets()
        return 0

    cdef int _build_buckets(self) except -1:
        cdef int bits = 0
        cdef Py_ssize_t nb, b, i = 0
        cdef uint64_t start
        while (<Py_ssize_t>1 << (bits + 1)) * 4 <= self._npoints and bits < 24:
            bits += 1
        nb = <Py_ssize_t>1 << bits
        self._shift = 32 - bits
        self._buckets = <uint32_t*>malloc((nb + 1) * sizeof(uint32_t))
        if self._buckets == NULL:
            raise MemoryError()
        # buckets[b] = index of the first point >= b << shift; buckets[nb] = npoints.
        for b in range(nb):
            start = (<uint64_t>b) << self._shift
            while i < self._npoints and self._points[i] < start:
                i += 1
            self._buckets[b] = <uint32_t>i
        self._buckets[nb] = <uint32_t>self._npoints
        return 0

    # -- lookups ---------------------------------------------------------------------

    cdef inline Py_ssize_t _find(self, uint32_t h) noexcept nogil:
        cdef uint64_t b = (<uint64_t>h) >> self._shift
        cdef Py_ssize_t lo = self._buckets[b], hi = self._buckets[b + 1], mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._points[mid] <= h:
                lo = mid + 1
            else:
                hi = mid
        return 0 if lo == self._npoints else lo

    cdef inline Py_ssize_t _owner_of(self, object key) except -1:
        return self._owners[self._find(_hash_key(self._mode, self._seed, key))]

    cdef int _check_nonempty(self) except -1:
        if self._npoints == 0:
            raise EmptyRingError("lookup on a ring with no nodes")
        return 0

    def lookup(self, key):
        """The node that owns ``key``."""
        self._check_nonempty()
        return self._names[self._owner_of(key)]

    cdef int _hash_batch(self, object seq, uint32_t* out) except -1:
        """Hash every key of a list or tuple into ``out``."""
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i = 0
        cdef PyObject** items = PySequence_Fast_ITEMS(seq)
        cdef PyObject* key
        cdef const uint8_t* ptrs[8]
        cdef Py_ssize_t lens[8]
        cdef int mode = self._mode
        cdef uint32_t seed = self._seed
        while i < n:
            if mode == KETAMA and i + 8 <= n and _gather8(items + i, ptrs, lens):
                _md5_word0_x8(ptrs, lens, out + i)
                i += 8
                continue
            key = items[i]
            if PyUnicode_Check(<object>key) or PyBytes_Check(<object>key):
                out[i] = _hash_key(mode, seed, <object>key)
            else:
                # The buffer protocol may run Python code that resizes a list.
                out[i] = _hash_other(mode, seed, <object>key)
                if PySequence_Fast_GET_SIZE(seq) != n:
                    raise RuntimeError("keys changed size during the call")
                items = PySequence_Fast_ITEMS(seq)
            i += 1
        return 0

    def lookup_many(self, keys):
        """The owner of every key, in order."""
        self._check_nonempty()
        if type(keys) is not list and type(keys) is not tuple:
            keys = list(keys)
        seq = PySequence_Fast(keys, "keys must be iterable")
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i
        cdef uint32_t* hashes = <uint32_t*>malloc((n if n else 1) * sizeof(uint32_t))
        cdef PyObject* name
        if hashes == NULL:
            raise MemoryError()
        try:
            self._hash_batch(seq, hashes)
            result = PyList_New(n)
            for i in range(n):
                name = PyTuple_GET_ITEM(self._names, self._owners[self._find(hashes[i])])
                Py_INCREF(<object>name)
                PyList_SET_ITEM(result, i, <object>name)
        finally:
            free(hashes)
        return result

    cdef tuple _walk(self, Py_ssize_t start, Py_ssize_t n, uint32_t* stamp, uint32_t mark):
        cdef Py_ssize_t want = min(n, self._reachable), got = 0, i = start
        cdef uint16_t owner
        out = PyTuple_New(want)
        while got < want:
            owner = self._owners[i]
            if stamp[owner] != mark:
                stamp[owner] = mark
                name = <object>PyTuple_GET_ITEM(self._names, owner)
                Py_INCREF(name)
                PyTuple_SET_ITEM(out, got, name)
                got += 1
            i += 1
            if i == self._npoints:
                i = 0
        return out

    def preference_list(self, key, n):
        """The first ``n`` distinct nodes clockwise from ``key`` (fewer if the ring has fewer).

        The first entry is ``lookup(key)``.
        """
        return self.preference_lists((key,), n)[0]

    def preference_lists(self, keys, n):
        """``preference_list(key, n)`` for every key, in order."""
        cdef Py_ssize_t count = _check_n(n), i, total
        self._check_nonempty()
        keys = tuple(keys)
        total = len(keys)
        cdef uint32_t* stamp = <uint32_t*>malloc(len(self._names) * sizeof(uint32_t))
        if stamp == NULL:
            raise MemoryError()
        memset(stamp, 0, len(self._names) * sizeof(uint32_t))
        result = PyList_New(total)
        try:
            for i in range(total):
                walked = self._walk(self._find(_hash_key(self._mode, self._seed, keys[i])),
                                    count, stamp, <uint32_t>(i + 1))
                Py_INCREF(walked)
                PyList_SET_ITEM(result, i, walked)
        finally:
            free(stamp)
        return result

    def group_by_node(self, keys):
        """Keys grouped by owner: the caller's key objects, in the caller's order.

        Only nodes that own at least one key appear, in the ring's node order.
        """
        self._check_nonempty()
        # A tuple snapshot: key hashing may run Python code (buffer protocol).
        if type(keys) is not tuple:
            keys = tuple(keys)
        cdef tuple snapshot = keys
        cdef Py_ssize_t n = len(snapshot), i, nn = len(self._names)
        cdef uint32_t* owner_of = <uint32_t*>malloc((n if n else 1) * sizeof(uint32_t))
        cdef Py_ssize_t* fill = <Py_ssize_t*>malloc(nn * sizeof(Py_ssize_t))
        cdef PyObject* key
        cdef uint32_t o
        if owner_of == NULL or fill == NULL:
            free(owner_of)
            free(fill)
            raise MemoryError()
        try:
            self._hash_batch(snapshot, owner_of)
            memset(fill, 0, nn * sizeof(Py_ssize_t))
            for i in range(n):
                o = self._owners[self._find(owner_of[i])]
                owner_of[i] = o
                fill[o] += 1
            groups = [None] * nn
            for i in range(nn):
                if fill[i]:
                    groups[i] = PyList_New(fill[i])
                    fill[i] = 0
            for i in range(n):
                o = owner_of[i]
                key = PyTuple_GET_ITEM(snapshot, i)
                Py_INCREF(<object>key)
                PyList_SET_ITEM(groups[o], fill[o], <object>key)
                fill[o] += 1
        finally:
            free(owner_of)
            free(fill)
        return {self._names[i]: groups[i] for i in range(nn) if groups[i] is not None}

    # -- derived rings ---------------------------------------------------------------

    def _derive(self, weights):
        return Ring(weights, vnodes=self._vnodes, hash=self._hash, seed=self._seed)

    def with_node(self, name, weight=1):
        """A new ring with ``name`` added; this ring is unchanged."""
        if name in self._weights:
            raise ValueError(f"nodes: duplicate node name {name!r}")
        return self._derive({**self._weights, name: weight})

    def without_node(self, name):
        """A new ring without ``name`` (``KeyError`` if absent); this ring is unchanged."""
        if name not in self._weights:
            raise KeyError(name)
        return self._derive({k: w for k, w in self._weights.items() if k != name})

    def with_weights(self, weights):
        """A new ring with the given nodes' weights changed (``KeyError`` for unknown names)."""
        for name in weights:
            if name not in self._weights:
                raise KeyError(name)
        return self._derive({**self._weights, **weights})

    # -- introspection ---------------------------------------------------------------

    @property
    def nodes(self):
        """Node names, sorted (by code point, which is also UTF-8 byte order)."""
        return self._names

    @property
    def weights(self):
        """A copy of ``{name: weight}``, in node order."""
        return dict(self._weights)

    @property
    def vnodes(self):
        """Points per unit weight (murmur3) or 4 x md5 digests per average node (ketama)."""
        return self._vnodes

    @property
    def hash(self):
        """The hashing mode: ``"murmur3"`` or ``"ketama"``."""
        return self._hash

    @property
    def seed(self):
        """The murmur3 seed (always 0 for ketama)."""
        return self._seed

    @property
    def point_count(self):
        """Number of points on the ring (collisions included)."""
        return self._npoints

    @property
    def _nbytes(self):
        """Bytes held by the point, owner and bucket arrays."""
        return self._npoints * 6 + ((<Py_ssize_t>1 << (32 - self._shift)) + 1) * 4

    def ownership(self):
        """Each node's fraction of the 2**32 hash space (they sum to 1 unless empty)."""
        cdef Py_ssize_t nn = len(self._names), i
        shares = [0] * nn
        cdef uint64_t* acc = <uint64_t*>malloc((nn if nn else 1) * sizeof(uint64_t))
        if acc == NULL:
            raise MemoryError()
        memset(acc, 0, (nn if nn else 1) * sizeof(uint64_t))
        if self._npoints:
            acc[self._owners[0]] += (<uint64_t>self._points[0] + (<uint64_t>1 << 32)
                                     - self._points[self._npoints - 1])
            for i in range(1, self._npoints):
                acc[self._owners[i]] += self._points[i] - self._points[i - 1]
        for i in range(nn):
            shares[i] = acc[i]
        free(acc)
        return {name: share / 4294967296 for name, share in zip(self._names, shares)}

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._weights

    def _identity(self):
        return (tuple(self._weights.items()), self._vnodes, self._hash, self._seed)

    def __eq__(self, other):
        if not isinstance(other, Ring):
            return NotImplemented
        return self._identity() == (<Ring>other)._identity()

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash(self._identity())

    def __reduce__(self):
        return (_rebuild, (dict(self._weights), self._vnodes, self._hash, self._seed))

    def __repr__(self):
        return _format_repr(self._weights, self._vnodes, self._hash, self._seed)
