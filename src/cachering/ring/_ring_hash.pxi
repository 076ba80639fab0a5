# Included by _ring_c.pyx (one module, so these inline into its batch loops): the hash
# functions and how keys are hashed. Uses the cimports and DEFs made before the include.

# ---- MurmurHash3 x86_32 -------------------------------------------------------------

cdef inline uint32_t _rotl(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    # Byte by byte so big-endian hosts agree; compilers turn this into one load.
    return ((<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint32_t _murmur3_k(uint32_t k) noexcept nogil:
    return _rotl(k * 0xCC9E2D51U, 15) * 0x1B873593U


cdef inline uint32_t _murmur3_h(uint32_t h, uint32_t k) noexcept nogil:
    return _rotl(h ^ k, 13) * 5 + 0xE6546B64U


cdef inline uint32_t _murmur3(const uint8_t* data, Py_ssize_t n, uint32_t seed) noexcept nogil:
    cdef uint32_t h = seed, k
    cdef Py_ssize_t i = 0
    # Four blocks per pass: their k mixes are independent, so they overlap in the CPU,
    # and the loop test runs once per 16 bytes.
    while i + 16 <= n:
        h = _murmur3_h(h, _murmur3_k(_le32(data + i)))
        h = _murmur3_h(h, _murmur3_k(_le32(data + i + 4)))
        h = _murmur3_h(h, _murmur3_k(_le32(data + i + 8)))
        h = _murmur3_h(h, _murmur3_k(_le32(data + i + 12)))
        i += 16
    while i + 4 <= n:
        h = _murmur3_h(h, _murmur3_k(_le32(data + i)))
        i += 4
    cdef const uint8_t* tail = data + i
    k = 0
    cdef int rest = n & 3
    if rest == 3:
        k ^= (<uint32_t>tail[2]) << 16
    if rest >= 2:
        k ^= (<uint32_t>tail[1]) << 8
    if rest >= 1:
        k ^= tail[0]
        h ^= _murmur3_k(k)
    h ^= <uint32_t>n
    h ^= h >> 16
    h *= 0x85EBCA6BU
    h ^= h >> 13
    h *= 0xC2B2AE35U
    return h ^ (h >> 16)


# ---- MD5 (RFC 1321), only what ketama needs --------------------------------------------

cdef extern from *:
    """
    /* MD5 (RFC 1321) compression, every step's constant, shift and message word fixed
       at compile time: cr_md5_block for one message, cr_md5_x16 for ketama batches.
       MD5 is a chain of 64 dependent steps, so one message at a time leaves most of the
       CPU idle; cr_md5_x16 runs sixteen single-block messages as two chains of eight
       lanes (GCC/Clang vector extensions: AVX2 when the CPU has it, else the compiler
       splits each vector into SSE2/NEON halves). Its input m[16 * g + l] is word g of
       lane l; its output is the first digest word of each lane. */
    #include <string.h>
    #define CR_ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
    #define CR_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
    #define CR_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
    #define CR_H(x, y, z) ((x) ^ (y) ^ (z))
    #define CR_I(x, y, z) ((y) ^ ((x) | ~(z)))
    #define CR_MD5_STEPS(S) \
        S(CR_F, a, b, c, d, 0, 0xd76aa478u, 7) S(CR_F, d, a, b, c, 1, 0xe8c7b756u, 12) \
        S(CR_F, c, d, a, b, 2, 0x242070dbu, 17) S(CR_F, b, c, d, a, 3, 0xc1bdceeeu, 22) \
        S(CR_F, a, b, c, d, 4, 0xf57c0fafu, 7) S(CR_F, d, a, b, c, 5, 0x4787c62au, 12) \
        S(CR_F, c, d, a, b, 6, 0xa8304613u, 17) S(CR_F, b, c, d, a, 7, 0xfd469501u, 22) \
        S(CR_F, a, b, c, d, 8, 0x698098d8u, 7) S(CR_F, d, a, b, c, 9, 0x8b44f7afu, 12) \
        S(CR_F, c, d, a, b, 10, 0xffff5bb1u, 17) S(CR_F, b, c, d, a, 11, 0x895cd7beu, 22) \
        S(CR_F, a, b, c, d, 12, 0x6b901122u, 7) S(CR_F, d, a, b, c, 13, 0xfd987193u, 12) \
        S(CR_F, c, d, a, b, 14, 0xa679438eu, 17) S(CR_F, b, c, d, a, 15, 0x49b40821u, 22) \
        S(CR_G, a, b, c, d, 1, 0xf61e2562u, 5) S(CR_G, d, a, b, c, 6, 0xc040b340u, 9) \
        S(CR_G, c, d, a, b, 11, 0x265e5a51u, 14) S(CR_G, b, c, d, a, 0, 0xe9b6c7aau, 20) \
        S(CR_G, a, b, c, d, 5, 0xd62f105du, 5) S(CR_G, d, a, b, c, 10, 0x02441453u, 9) \
        S(CR_G, c, d, a, b, 15, 0xd8a1e681u, 14) S(CR_G, b, c, d, a, 4, 0xe7d3fbc8u, 20) \
        S(CR_G, a, b, c, d, 9, 0x21e1cde6u, 5) S(CR_G, d, a, b, c, 14, 0xc33707d6u, 9) \
        S(CR_G, c, d, a, b, 3, 0xf4d50d87u, 14) S(CR_G, b, c, d, a, 8, 0x455a14edu, 20) \
        S(CR_G, a, b, c, d, 13, 0xa9e3e905u, 5) S(CR_G, d, a, b, c, 2, 0xfcefa3f8u, 9) \
        S(CR_G, c, d, a, b, 7, 0x676f02d9u, 14) S(CR_G, b, c, d, a, 12, 0x8d2a4c8au, 20) \
        S(CR_H, a, b, c, d, 5, 0xfffa3942u, 4) S(CR_H, d, a, b, c, 8, 0x8771f681u, 11) \
        S(CR_H, c, d, a, b, 11, 0x6d9d6122u, 16) S(CR_H, b, c, d, a, 14, 0xfde5380cu, 23) \
        S(CR_H, a, b, c, d, 1, 0xa4beea44u, 4) S(CR_H, d, a, b, c, 4, 0x4bdecfa9u, 11) \
        S(CR_H, c, d, a, b, 7, 0xf6bb4b60u, 16) S(CR_H, b, c, d, a, 10, 0xbebfbc70u, 23) \
        S(CR_H, a, b, c, d, 13, 0x289b7ec6u, 4) S(CR_H, d, a, b, c, 0, 0xeaa127fau, 11) \
        S(CR_H, c, d, a, b, 3, 0xd4ef3085u, 16) S(CR_H, b, c, d, a, 6, 0x04881d05u, 23) \
        S(CR_H, a, b, c, d, 9, 0xd9d4d039u, 4) S(CR_H, d, a, b, c, 12, 0xe6db99e5u, 11) \
        S(CR_H, c, d, a, b, 15, 0x1fa27cf8u, 16) S(CR_H, b, c, d, a, 2, 0xc4ac5665u, 23) \
        S(CR_I, a, b, c, d, 0, 0xf4292244u, 6) S(CR_I, d, a, b, c, 7, 0x432aff97u, 10) \
        S(CR_I, c, d, a, b, 14, 0xab9423a7u, 15) S(CR_I, b, c, d, a, 5, 0xfc93a039u, 21) \
        S(CR_I, a, b, c, d, 12, 0x655b59c3u, 6) S(CR_I, d, a, b, c, 3, 0x8f0ccc92u, 10) \
        S(CR_I, c, d, a, b, 10, 0xffeff47du, 15) S(CR_I, b, c, d, a, 1, 0x85845dd1u, 21) \
        S(CR_I, a, b, c, d, 8, 0x6fa87e4fu, 6) S(CR_I, d, a, b, c, 15, 0xfe2ce6e0u, 10) \
        S(CR_I, c, d, a, b, 6, 0xa3014314u, 15) S(CR_I, b, c, d, a, 13, 0x4e0811a1u, 21) \
        S(CR_I, a, b, c, d, 4, 0xf7537e82u, 6) S(CR_I, d, a, b, c, 11, 0xbd3af235u, 10) \
        S(CR_I, c, d, a, b, 2, 0x2ad7d2bbu, 15) S(CR_I, b, c, d, a, 9, 0xeb86d391u, 21)
    #define CR_STEP_1(f, a, b, c, d, g, t, s) \
        a += f(b, c, d) + m[g] + (t); a = b + CR_ROTL(a, s);
    static void cr_md5_block(uint32_t *state, const uint32_t *m) {
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        CR_MD5_STEPS(CR_STEP_1)
        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
    }
    #if defined(__GNUC__) || defined(__clang__)
    typedef uint32_t cr_v8 __attribute__((vector_size(32)));
    #define CR_STEP_V(f, a, b, c, d, g, t, s) {                                   \
        cr_v8 x0_, x1_;                                                          \
        memcpy(&x0_, m + 16 * (g), sizeof x0_);                                  \
        memcpy(&x1_, m + 16 * (g) + 8, sizeof x1_);                              \
        a##0 += f(b##0, c##0, d##0) + x0_ + (t); a##0 = b##0 + CR_ROTL(a##0, s); \
        a##1 += f(b##1, c##1, d##1) + x1_ + (t); a##1 = b##1 + CR_ROTL(a##1, s); }
    #define CR_MD5_X16(name, attr)                                              \
    attr static void name(const uint32_t *m, uint32_t *out) {                   \
        const cr_v8 A = {0x67452301u, 0x67452301u, 0x67452301u, 0x67452301u,    \
                         0x67452301u, 0x67452301u, 0x67452301u, 0x67452301u};   \
        cr_v8 a0 = A, a1 = A, b0, b1, c0, c1, d0, d1;                           \
        b0 = b1 = A - A + 0xEFCDAB89u;                                          \
        c0 = c1 = A - A + 0x98BADCFEu;                                          \
        d0 = d1 = A - A + 0x10325476u;                                          \
        CR_MD5_STEPS(CR_STEP_V)                                                 \
        a0 += A;                                                                \
        a1 += A;                                                                \
        memcpy(out, &a0, sizeof a0);                                            \
        memcpy(out + 8, &a1, sizeof a1);                                        \
    }
    CR_MD5_X16(cr_md5_x16_base, )
    #if (defined(__x86_64__) || defined(__i386__)) && !defined(__AVX2__)
    CR_MD5_X16(cr_md5_x16_avx2, __attribute__((target("avx2"))))
    static void (*cr_md5_x16_impl)(const uint32_t *, uint32_t *) = cr_md5_x16_base;
    static void cr_md5_x16_select(void) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2")) cr_md5_x16_impl = cr_md5_x16_avx2;
    }
    static void cr_md5_x16(const uint32_t *m, uint32_t *out) { cr_md5_x16_impl(m, out); }
    #else
    static void cr_md5_x16_select(void) {}
    static void cr_md5_x16(const uint32_t *m, uint32_t *out) { cr_md5_x16_base(m, out); }
    #endif
    #else
    static void cr_md5_x16_select(void) {}
    static void cr_md5_x16(const uint32_t *m, uint32_t *out) {
        uint32_t w[16], state[4];
        int l, g;
        for (l = 0; l < 16; l++) {
            for (g = 0; g < 16; g++) w[g] = m[16 * g + l];
            state[0] = 0x67452301u;
            state[1] = 0xEFCDAB89u;
            state[2] = 0x98BADCFEu;
            state[3] = 0x10325476u;
            cr_md5_block(state, w);
            out[l] = state[0];
        }
    }
    #endif
    """
    void cr_md5_block(uint32_t* state, const uint32_t* m) noexcept nogil
    void cr_md5_x16_select() noexcept nogil
    void cr_md5_x16(const uint32_t* m, uint32_t* out) noexcept nogil


cr_md5_x16_select()


cdef inline void _md5_block(uint32_t* state, const uint8_t* block) noexcept nogil:
    cdef uint32_t m[16]
    cdef int i
    for i in range(16):
        m[i] = _le32(block + 4 * i)
    cr_md5_block(state, m)


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




cdef void _md5_word0_x16(const uint8_t** data, const Py_ssize_t* lens, int count,
                         uint32_t* out) noexcept nogil:
    """First digest word of ``count`` (at most 16) messages, each shorter than 56 bytes."""
    cdef uint32_t m[256]  # lane-interleaved: word g of lane l at m[16 * g + l]
    cdef uint32_t res[16]
    cdef const uint8_t* p
    cdef Py_ssize_t n, words, g
    cdef uint32_t tail
    cdef int l, r
    memset(m, 0, sizeof(m))
    for l in range(count, 16):
        m[l] = 0x80  # unused lanes hash the empty message
    for l in range(count):
        p, n = data[l], lens[l]
        words = n >> 2
        for g in range(words):
            m[16 * g + l] = _le32(p + 4 * g)
        # The message's last bytes, then the 0x80 end marker, little-endian.
        tail = 0
        r = n & 3
        if r == 3:
            tail = (<uint32_t>p[4 * words + 2]) << 16
        if r >= 2:
            tail |= (<uint32_t>p[4 * words + 1]) << 8
        if r >= 1:
            tail |= p[4 * words]
        m[16 * words + l] = tail | ((<uint32_t>0x80) << (8 * r))
        m[16 * 14 + l] = <uint32_t>(n << 3)
    cr_md5_x16(m, res)
    memcpy(out, res, count * sizeof(uint32_t))


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
            return _hash_bytes(mode, seed, <const uint8_t*>cr_ascii_data(<PyObject*>key),
                               PyUnicode_GET_LENGTH(key))
        buf = PyUnicode_AsUTF8AndSize(key, &n)
        return _hash_bytes(mode, seed, <const uint8_t*>buf, n)
    if PyBytes_Check(key):
        return _hash_bytes(mode, seed, <const uint8_t*>PyBytes_AS_STRING(key),
                           PyBytes_GET_SIZE(key))
    return _hash_other(mode, seed, key)


cdef int _gather16(PyObject** items, Py_ssize_t avail, const uint8_t** ptrs,
                  Py_ssize_t* lens) except -1:
    """Point at up to 16 leading str/bytes keys that fit one MD5 block; return how many."""
    cdef Py_ssize_t j, last = avail if avail < 16 else 16
    cdef PyObject* key
    for j in range(last):
        key = items[j]
        if PyUnicode_Check(<object>key):
            if PyUnicode_IS_COMPACT_ASCII(<object>key):
                ptrs[j] = <const uint8_t*>cr_ascii_data(key)
                lens[j] = PyUnicode_GET_LENGTH(<object>key)
            else:
                ptrs[j] = <const uint8_t*>PyUnicode_AsUTF8AndSize(<object>key, &lens[j])
        elif PyBytes_Check(<object>key):
            ptrs[j] = <const uint8_t*>PyBytes_AS_STRING(<object>key)
            lens[j] = PyBytes_GET_SIZE(<object>key)
        else:
            return <int>j
        if lens[j] >= 56:
            return <int>j
    return <int>last


cdef bint _plain_keys(list keys) noexcept:
    """True if every key is a str or bytes (hashing them runs no Python code)."""
    cdef Py_ssize_t i
    cdef PyObject** items = PySequence_Fast_ITEMS(keys)
    for i in range(PySequence_Fast_GET_SIZE(keys)):
        if not (PyUnicode_Check(<object>items[i]) or PyBytes_Check(<object>items[i])):
            return False
    return True


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
