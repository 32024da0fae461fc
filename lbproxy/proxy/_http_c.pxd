# Declarations of csrc/_http_c.pyx (built as lbproxy.proxy._http_c) that other compiled
# modules cimport: the parser-callback base class of both protocols.

cdef class HeadCollector:
    cdef public list headers
    cdef public Py_ssize_t header_bytes
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_headers
    cdef public bint in_head
