# Shared by lbproxy._http_c and lbproxy._proxy_c (each compiles its own copy, so the
# native protocols can subclass it without a cross-module cimport).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE


cdef class HeadCollector:
    """Parser-callback base: collects header fields, lowercased, within the head limits."""

    cdef public list headers
    cdef public Py_ssize_t header_bytes
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_headers
    cdef public bint in_head

    def __cinit__(self, *args, **kwargs):
        self.headers = []
        self.header_bytes = 0
        self.max_header_bytes = 65536
        self.max_headers = 100
        self.in_head = False

    def on_header(self, bytes name, bytes value):
        """httptools callback: one field; ignored outside the head (trailers are dropped)."""
        if not self.in_head:
            return
        self.header_bytes += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        if (self.header_bytes > self.max_header_bytes
                or PyList_GET_SIZE(self.headers) >= self.max_headers):
            self.head_too_large()
            return
        # RFC 9110 §5.5: leading and trailing whitespace is not part of a field value;
        # llhttp drops the leading OWS only ("Content-Length: 5 " must mean 5).
        cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
        if n and PyBytes_AS_STRING(value)[n - 1] in (32, 9):
            value = value.rstrip(b" \t")
        self.headers.append((name.lower(), value))

    def head_too_large(self):
        """Called when a limit is passed; subclasses raise their own error."""
        raise ValueError("header limits exceeded")
