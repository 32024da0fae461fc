# The C types of lbproxy/balance/latency.py, compiled as lbproxy.balance._latency_c: the
# compiled gate (lbproxy/balance/_cluster_c.pxd) cimports `bucket_index` and calls it in C.

cimport cython
from libc.stdint cimport int64_t

cdef Py_ssize_t _LAST
cdef int _SUB_BITS

@cython.locals(us=int64_t, top=int64_t, shift=int, index=Py_ssize_t)
cpdef Py_ssize_t bucket_index(int64_t rtt_ns) except -1
