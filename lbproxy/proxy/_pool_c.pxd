# The C types of lbproxy/proxy/pool.py, which Cython compiles as lbproxy.proxy._pool_c
# (see _client_c.pxd, its partner: the two cimport each other's classes so that the client
# and upstream protocols call each other through C, not Python frames). Only declarations
# live here: every line of behaviour is in pool.py, which also runs uncompiled.

cimport cython

from lbproxy._codes cimport *  # every shared code, as C enums
from lbproxy.proxy._client_c cimport ClientConnection, Exchange
from lbproxy.proxy._http_c cimport HeadCollector

cdef bytes CHUNK_END, CRLF
cdef Py_ssize_t _MAX_RESPONSE_HEAD, _MAX_RESPONSE_HEADERS
cdef object ResponseParser, ParserError


@cython.final
cdef class UpstreamConnection(HeadCollector):
    cdef public bint _interim, _done, _reusable, _chunked_out
    cdef public bint started, got_bytes, request_sent, reused, closed
    cdef public Py_ssize_t _length_left, _raw_left
    cdef public list _out
    cdef public Exchange ex
    cdef public ClientConnection client
    cdef public UpstreamPool pool
    cdef public object transport, _time, _parser
    cdef public int framing_in
    cdef public double idle_since

    # asyncio and httptools call these by name: cpdef keeps them Python-visible while
    # their locals get C types.
    @cython.locals(client=ClientConnection, left=Py_ssize_t)
    cpdef data_received(self, data)
    @cython.locals(client=ClientConnection, ex=Exchange)
    cpdef connection_lost(self, exc)
    @cython.locals(client=ClientConnection, ex=Exchange, status=int)
    cpdef on_headers_complete(self)
    cpdef on_body(self, bytes data)
    cpdef on_message_complete(self)
    cpdef abort(self)

    cdef void attach(self, Exchange ex, bytes first) except *
    @cython.locals(n=Py_ssize_t)
    cdef void _relay_raw(self, ClientConnection client, bytes data, Py_ssize_t left) except *
    @cython.locals(client=ClientConnection)
    cdef void _flush(self) except *
    @cython.locals(client=ClientConnection, ex=Exchange)
    cdef void _complete(self) except *
    @cython.locals(client=ClientConnection, ex=Exchange)
    cdef void _fail_malformed(self) except *
    cdef void request_complete(self) noexcept


@cython.final
cdef class UpstreamPool:
    cdef public object _plane, loop, host, port, waiters
    cdef public list idle
    cdef public Py_ssize_t total

    @cython.locals(conn=UpstreamConnection)
    cdef void acquire(self, Exchange ex) except *
    @cython.locals(conn=UpstreamConnection)
    cpdef _connected(self, Exchange ex, task)
    @cython.locals(ex=Exchange)
    cpdef release(self, UpstreamConnection conn)
    @cython.locals(ex=Exchange)
    cpdef lost(self, UpstreamConnection conn)
