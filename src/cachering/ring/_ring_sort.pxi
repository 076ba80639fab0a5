# Included by _ring_c.pyx (one module, so these inline into the Ring's build and lookup
# loops): sorting the points when a ring is built, and searching them on lookup. Uses the
# cimports made before the include.

# ---- point search -------------------------------------------------------------------
cdef extern from *:
    """
    /* Index of the first point > h, wrapping to 0. The bucket of h's top bits holds
       fewer than 2 * top points, so counting the points <= h in a window of 2 * top - 1
       from the bucket start finds it: points past the bucket are > h by construction,
       and the 0xFFFFFFFF padding (or a real point equal to 0xFFFFFFFF) can only push
       the index to npoints, which wraps. The halvings compile to conditional moves: a
       plain binary search over hash values mispredicts about every other branch. */
    static inline Py_ssize_t cr_upper(const uint32_t *points, const uint32_t *buckets,
                                      int shift, Py_ssize_t top, Py_ssize_t npoints,
                                      uint32_t h) {
        /* Arithmetic on the comparison, not ?: -- GCC turns the latter into branches. */
        Py_ssize_t i = buckets[(uint64_t)h >> shift], step;
        for (step = top; step > 8; step >>= 1) i += (Py_ssize_t)(points[i + step - 1] <= h) * step;
        i += (Py_ssize_t)(points[i + 7] <= h) << 3;
        i += (Py_ssize_t)(points[i + 3] <= h) << 2;
        i += (Py_ssize_t)(points[i + 1] <= h) << 1;
        i += (Py_ssize_t)(points[i] <= h);
        return i < npoints ? i : 0;
    }
    """
    Py_ssize_t cr_upper(const uint32_t* points, const uint32_t* buckets, int shift,
                        Py_ssize_t top, Py_ssize_t npoints, uint32_t h) noexcept nogil


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
