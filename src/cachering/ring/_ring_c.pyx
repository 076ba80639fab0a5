# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled consistent-hash ring; answers identically to ``cachering.ring._ring_py``.

Layout: a sorted ``uint32`` point array (plus a few 0xFFFFFFFF padding entries), a
parallel ``uint16`` owner array and a bucket index on the top bits of the hash (at most
one uint32 per two points), so a ring costs about 7 bytes per point. Node validation,
point counts and ``repr`` come from the Python twin so that both raise the same errors.

Batches run in phases: hash every key into a buffer, map hashes to owners with a
branch-free search, then build the result; each phase is a tight loop with no calls.

The hash functions (MurmurHash3, MD5 and a sixteen-lane MD5 for batches) and key hashing
are in ``_ring_hash.pxi``, the point sort and search in ``_ring_sort.pxi``, both included
textually: they must inline into the batch loops, which Cython does only within one
module.
"""

# Why this file is over ~600 lines: it holds only the ``Ring`` cdef class (about 600 lines
# alone) and its declarations; one cdef class cannot be split across files without losing
# the inlining of its cdef methods into its batch loops.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.list cimport PyList_New
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcpy, memset

from ._ring_py import _check_n, _check_options, _check_seed, _format_repr, _parse_nodes
from ._ring_py import _point_counts
from ..errors import EmptyRingError

__all__ = ["Ring", "murmur3_32"]

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    bint PyUnicode_IS_COMPACT_ASCII(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    object PySequence_Fast(object, const char*)
    Py_ssize_t PySequence_Fast_GET_SIZE(object)
    PyObject** PySequence_Fast_ITEMS(object)
    void PyObject_GC_UnTrack(void*)

cdef extern from *:
    """
    /* A compact ASCII str keeps its characters right after its header (the layout
       PyUnicode_DATA reads too, after re-checking kind and compactness every call). */
    #define cr_ascii_data(op) ((const void *)(((PyASCIIObject *)(op)) + 1))
    """
    const void* cr_ascii_data(PyObject* op) noexcept nogil

DEF MURMUR3 = 0
DEF KETAMA = 1

include "_ring_hash.pxi"
include "_ring_sort.pxi"


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
    cdef int _steps
    cdef Py_ssize_t _top
    cdef int _mode
    cdef uint32_t _seed
    cdef int _reachable
    cdef tuple _names
    cdef bint _exact_names
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
        self._exact_names = all(type(name) is str for name in self._names)
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
        cdef Py_ssize_t nb, b, i = 0, widest = 0, pad
        cdef uint64_t start
        cdef uint32_t* grown
        # At most one index entry per two points: with 4-byte points and 2-byte owners
        # that keeps the ring within 8 bytes per point, and buckets average 2-4 points.
        while (<Py_ssize_t>1 << (bits + 1)) * 2 <= self._npoints and bits < 24:
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
        for b in range(nb):
            widest = max(widest, self._buckets[b + 1] - self._buckets[b])
        # cr_upper probes a window of 2**steps - 1 points from the bucket start, so it
        # needs no data-dependent branch; the padding keeps the last window in bounds.
        self._steps = 4  # cr_upper always takes the last four halvings
        while (<Py_ssize_t>1 << self._steps) <= widest:
            self._steps += 1
        self._top = (<Py_ssize_t>1 << self._steps) >> 1
        pad = (<Py_ssize_t>1 << self._steps) - 1
        grown = <uint32_t*>realloc(self._points, (self._npoints + pad + 1) * sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError()
        self._points = grown
        for i in range(self._npoints, self._npoints + pad + 1):
            self._points[i] = 0xFFFFFFFFU
        return 0

    # -- lookups ---------------------------------------------------------------------

    cdef inline Py_ssize_t _find(self, uint32_t h) noexcept nogil:
        return cr_upper(self._points, self._buckets, self._shift, self._top, self._npoints, h)

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

    cdef int _hash_batch(self, object seq, uint32_t* out, Py_ssize_t i, Py_ssize_t stop,
                         bint plain_only=False) except -1:
        """Hash keys ``i`` to ``stop`` of a list or tuple into the same slots of ``out``.

        With ``plain_only``, stop and return 1 at the first key that is neither str nor
        bytes (hashing it might run Python code); else return 0.
        """
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq)
        cdef PyObject** items = PySequence_Fast_ITEMS(seq)
        cdef PyObject* key
        cdef const uint8_t* ptrs[16]
        cdef Py_ssize_t lens[16]
        cdef int mode = self._mode, count
        cdef uint32_t seed = self._seed
        while i < stop:
            key = items[i]
            if mode == MURMUR3:
                # Most keys are ASCII str: hash them in place with no call at all.
                if PyUnicode_Check(<object>key) and PyUnicode_IS_COMPACT_ASCII(<object>key):
                    out[i] = _murmur3(<const uint8_t*>cr_ascii_data(key),
                                      PyUnicode_GET_LENGTH(<object>key), seed)
                    i += 1
                    continue
            else:
                # Four or more short keys in a row go through the 16-lane MD5.
                count = _gather16(items + i, stop - i, ptrs, lens)
                if count >= 4:
                    _md5_word0_x16(ptrs, lens, count, out + i)
                    i += count
                    continue
            if PyUnicode_Check(<object>key) or PyBytes_Check(<object>key):
                out[i] = _hash_key(mode, seed, <object>key)
            elif plain_only:
                return 1
            else:
                # The buffer protocol may run Python code that resizes a list.
                out[i] = _hash_other(mode, seed, <object>key)
                if PySequence_Fast_GET_SIZE(seq) != n:
                    raise RuntimeError("keys changed size during the call")
                items = PySequence_Fast_ITEMS(seq)
            i += 1
        return 0

    cdef void _owner_indices(self, uint32_t* hashes, Py_ssize_t n) noexcept nogil:
        """Replace each hash by the index of its owner (fields in locals: no reloads)."""
        cdef const uint32_t* points = self._points
        cdef const uint32_t* buckets = self._buckets
        cdef const uint16_t* owners = self._owners
        cdef int shift = self._shift
        cdef Py_ssize_t top = self._top, npoints = self._npoints, i
        for i in range(n):
            hashes[i] = owners[cr_upper(points, buckets, shift, top, npoints, hashes[i])]

    cdef void _point_indices(self, uint32_t* hashes, Py_ssize_t n) noexcept nogil:
        """Replace each hash by the index of the first point clockwise of it."""
        cdef const uint32_t* points = self._points
        cdef const uint32_t* buckets = self._buckets
        cdef int shift = self._shift
        cdef Py_ssize_t top = self._top, npoints = self._npoints, i
        for i in range(n):
            hashes[i] = <uint32_t>cr_upper(points, buckets, shift, top, npoints, hashes[i])

    def lookup_many(self, keys):
        """The owner of every key, in order."""
        self._check_nonempty()
        if type(keys) is not list and type(keys) is not tuple:
            keys = list(keys)
        seq = PySequence_Fast(keys, "keys must be iterable")
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i
        cdef uint32_t* owner_of = <uint32_t*>malloc((n if n else 1) * sizeof(uint32_t))
        cdef PyObject** names = PySequence_Fast_ITEMS(self._names)
        cdef PyObject** slots
        cdef PyObject* name
        if owner_of == NULL:
            raise MemoryError()
        try:
            self._hash_batch(seq, owner_of, 0, n)
            self._owner_indices(owner_of, n)
            result = PyList_New(n)
            slots = PySequence_Fast_ITEMS(result)
            for i in range(n):
                name = names[owner_of[i]]
                Py_INCREF(<object>name)
                slots[i] = name
        finally:
            free(owner_of)
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
        if self._exact_names:
            # A tuple of exact str can never be part of a cycle. CPython's collector
            # untracks such tuples itself, but only after traversing them at least once.
            PyObject_GC_UnTrack(<PyObject*>out)
        return out

    cdef Py_ssize_t _want(self, object n) except -1:
        """``n`` checked as the twin checks it, and capped at the node count before it
        becomes a C integer (a list never holds more nodes than the ring has)."""
        cdef int overflow = 0
        cdef long long value = 0
        if type(n) is int:
            value = PyLong_AsLongLongAndOverflow(n, &overflow)
        if value < 1 and overflow <= 0:
            _check_n(n)  # raises the twin's ValueError
        cdef Py_ssize_t nodes = len(self._names)
        return nodes if overflow > 0 or value > nodes else <Py_ssize_t>value

    def preference_list(self, key, n):
        """The first ``n`` distinct nodes clockwise from ``key`` (fewer if the ring has fewer).

        The first entry is ``lookup(key)``.
        """
        cdef Py_ssize_t count = self._want(n)
        self._check_nonempty()
        cdef Py_ssize_t start = self._find(_hash_key(self._mode, self._seed, key))
        cdef Py_ssize_t nn = len(self._names)
        # Every single write and read routes through here: no heap work for small rings.
        cdef uint32_t small[64]
        cdef uint32_t* stamp = small
        if nn > 64:
            stamp = <uint32_t*>calloc(nn, sizeof(uint32_t))
            if stamp == NULL:
                raise MemoryError()
        else:
            memset(small, 0, nn * sizeof(uint32_t))
        try:
            return self._walk(start, count, stamp, 1)
        finally:
            if stamp != small:
                free(stamp)

    def preference_lists(self, keys, n):
        """``preference_list(key, n)`` for every key, in order."""
        cdef Py_ssize_t count = self._want(n), i, j, total, done = 0
        self._check_nonempty()
        if type(keys) is not tuple and (type(keys) is not list or not _plain_keys(keys)):
            keys = tuple(keys)
        total = PySequence_Fast_GET_SIZE(keys)
        cdef Py_ssize_t nn = len(self._names), npoints = self._npoints
        cdef uint32_t mark = 0
        cdef uint32_t* start = <uint32_t*>malloc((total if total else 1) * sizeof(uint32_t))
        cdef uint32_t* stamp = <uint32_t*>calloc(nn, sizeof(uint32_t))
        # Each key's list depends only on the point it lands on: in a batch that covers a
        # good share of the points, build each distinct list once and share the tuple.
        cdef PyObject** walks = <PyObject**>malloc((total if total else 1) * sizeof(PyObject*))
        cdef PyObject** seen = NULL
        cdef PyObject* walked
        if total * 8 >= npoints:
            seen = <PyObject**>calloc(npoints, sizeof(PyObject*))
        if start == NULL or stamp == NULL or walks == NULL or (total * 8 >= npoints
                                                               and seen == NULL):
            free(start)
            free(stamp)
            free(walks)
            free(seen)
            raise MemoryError()
        try:
            self._hash_batch(keys, start, 0, total)
            self._point_indices(start, total)
            # The list is created last, so the collector runs that the new tuples
            # trigger never traverse a large young result list.
            while done < total:
                j = start[done]
                if seen != NULL and seen[j] != NULL:
                    walked = seen[j]
                    Py_INCREF(<object>walked)
                else:
                    mark += 1
                    tup = self._walk(j, count, stamp, mark)
                    walked = <PyObject*>tup
                    Py_INCREF(<object>walked)
                    if seen != NULL:
                        seen[j] = walked
                walks[done] = walked
                done += 1
            result = PyList_New(total)
            memcpy(PySequence_Fast_ITEMS(result), walks, total * sizeof(PyObject*))
            done = 0  # the list owns the references now
        finally:
            for i in range(done):
                Py_XDECREF(walks[i])
            free(start)
            free(stamp)
            free(walks)
            free(seen)
        return result

    def group_by_preference(self, keys, n):
        """Keys grouped by ``preference_list(key, n)``: the caller's key objects, in the
        caller's order, under each distinct list in the order it first occurs."""
        cdef Py_ssize_t count = self._want(n), i, total, g
        self._check_nonempty()
        if type(keys) is not tuple and (type(keys) is not list or not _plain_keys(keys)):
            keys = tuple(keys)  # hashing a plain list's keys runs no Python code
        total = PySequence_Fast_GET_SIZE(keys)
        cdef Py_ssize_t nn = len(self._names), npoints = self._npoints
        cdef uint32_t mark = 0
        cdef uint32_t* slot = <uint32_t*>malloc((total if total else 1) * sizeof(uint32_t))
        cdef uint32_t* stamp = <uint32_t*>calloc(nn, sizeof(uint32_t))
        # group id + 1 of the list each point starts (0: not walked yet)
        cdef uint32_t* point_group = <uint32_t*>calloc(npoints, sizeof(uint32_t))
        cdef Py_ssize_t* fill = NULL
        cdef PyObject*** slots = NULL
        cdef PyObject** items = PySequence_Fast_ITEMS(keys)
        cdef PyObject* key
        if slot == NULL or stamp == NULL or point_group == NULL:
            free(slot)
            free(stamp)
            free(point_group)
            raise MemoryError()
        ids = {}
        prefs = []
        try:
            self._hash_batch(keys, slot, 0, total)
            self._point_indices(slot, total)
            # Distinct points are few (at most the ring's size): the walk and the dict
            # lookup run once per point, every key then costs an array read.
            for i in range(total):
                g = point_group[slot[i]]
                if g == 0:
                    mark += 1
                    tup = self._walk(slot[i], count, stamp, mark)
                    found = ids.get(tup)
                    if found is None:
                        prefs.append(tup)
                        g = len(prefs)
                        ids[tup] = g
                    else:
                        g = found
                    point_group[slot[i]] = <uint32_t>g
                slot[i] = <uint32_t>(g - 1)
            g = len(prefs)
            fill = <Py_ssize_t*>calloc(g if g else 1, sizeof(Py_ssize_t))
            slots = <PyObject***>malloc((g if g else 1) * sizeof(PyObject**))
            if fill == NULL or slots == NULL:
                raise MemoryError()
            for i in range(total):
                fill[slot[i]] += 1
            groups = [None] * g
            for i in range(g):
                group = PyList_New(fill[i])
                groups[i] = group
                slots[i] = PySequence_Fast_ITEMS(group)
            # Nothing below can fail or run Python code; the lists take the references.
            for i in range(total):
                key = items[i]
                Py_INCREF(<object>key)
                slots[slot[i]][0] = key
                slots[slot[i]] += 1
        finally:
            free(slot)
            free(stamp)
            free(point_group)
            free(fill)
            free(slots)
        return dict(zip(prefs, groups))

    def group_by_node(self, keys):
        """Keys grouped by owner: the caller's key objects, in the caller's order.

        Only nodes that own at least one key appear, in the ring's node order.
        """
        self._check_nonempty()
        if type(keys) is not tuple and type(keys) is not list:
            keys = tuple(keys)
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(keys), i = 0, j, stop, reffed = 0
        cdef Py_ssize_t nn = len(self._names)
        cdef uint32_t* owner_of = <uint32_t*>malloc((n if n else 1) * sizeof(uint32_t))
        cdef Py_ssize_t* fill = <Py_ssize_t*>calloc(nn, sizeof(Py_ssize_t))
        cdef PyObject*** slots = <PyObject***>malloc(nn * sizeof(PyObject**))
        cdef PyObject** items = PySequence_Fast_ITEMS(keys)
        cdef uint32_t o
        if owner_of == NULL or fill == NULL or slots == NULL:
            free(owner_of)
            free(fill)
            free(slots)
            raise MemoryError()
        try:
            # Take each key's reference right after hashing a chunk, while the key objects
            # are still in cache; the grouping pass then only moves pointers.
            while i < n:
                stop = min(i + 512, n)
                if self._hash_batch(keys, owner_of, i, stop, type(keys) is list):
                    # Hashing this key may run code that changes the list's items:
                    # start again on a tuple snapshot (nothing ran yet).
                    for j in range(reffed):
                        Py_XDECREF(items[j])
                    keys = tuple(keys)
                    items = PySequence_Fast_ITEMS(keys)
                    i = reffed = 0
                    continue
                for j in range(i, stop):
                    Py_INCREF(<object>items[j])
                reffed = i = stop
            self._owner_indices(owner_of, n)
            for i in range(n):
                fill[owner_of[i]] += 1
            groups = [None] * nn
            for i in range(nn):
                if fill[i]:
                    group = PyList_New(fill[i])
                    groups[i] = group
                    slots[i] = PySequence_Fast_ITEMS(group)
            # Nothing below can fail or run Python code; the lists take the references.
            for i in range(n):
                o = owner_of[i]
                slots[o][0] = items[i]
                slots[o] += 1
            reffed = 0
        finally:
            for i in range(reffed):
                Py_XDECREF(items[i])
            free(owner_of)
            free(fill)
            free(slots)
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
        return (self._npoints * 6 + ((<Py_ssize_t>1 << (32 - self._shift)) + 1) * 4
                + (<Py_ssize_t>1 << self._steps) * 4)

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
