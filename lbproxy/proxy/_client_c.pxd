# The C types of lbproxy/proxy/client.py, which Cython compiles as lbproxy.proxy._client_c
# (aiohttp's reader_c.pxd beside reader_py.py is the model). Only declarations live here:
# every line of behaviour is in client.py, which also runs uncompiled.
#
# What the types buy on the per-request path: final classes whose fields are C struct
# members (no instance dict, no descriptor lookup), internal methods called through the
# vtable instead of a Python frame, the module's constants as C values, and direct calls
# into the upstream protocol and pool (cimported from _pool_c.pxd).

cimport cython
from libc.stdint cimport int64_t

from lbproxy._codes cimport *  # every shared code, as C enums
from lbproxy.balance._cluster_c cimport Cluster, Lease
from lbproxy.proxy._http_c cimport HeadCollector
from lbproxy.proxy._pool_c cimport UpstreamConnection, UpstreamPool

cdef object log
cdef bytes CONTINUE_100, CHUNK_END, CRLF
cdef Py_ssize_t BUFFER_LIMIT, PIPELINE_LIMIT, PIPELINE_SLICE
cdef frozenset _IDEMPOTENT
cdef int P_UPSTREAM, P_BUFFER, P_PIPELINE, P_STOP
cdef int K_NONE, K_IDLE, K_HEAD, K_BODY, K_STALL, K_LINGER
cdef int SHEDDABLE, PROTECT_CLOSE
cdef int U_NONE, U_CONNECT, U_HEADERS, U_IDLE
cdef double LINGER_S, _INF
cdef object _now_ns, RequestParser, ParserUpgrade, ParserError
cdef object Refusal, Waiter, errors, analyse_request


@cython.final
cdef class Exchange:
    cdef public bint abandoned, body_done, head_request, keep_alive, retried, waiting_pool
    cdef public bint resent
    cdef public tuple tried
    cdef public bytes replay
    cdef public Py_ssize_t body_received, content_length, pending_bytes, max_body
    cdef public int flags, framing, minor, status
    cdef public ClientConnection conn
    cdef public UpstreamConnection up
    cdef public UpstreamPool pool
    cdef public Lease lease
    cdef public object connect_task, snapshot, waiter
    cdef public bytes host, method, path, query, upstream_head
    cdef public list headers, pending
    cdef public double t_connect, t_client_body_idle, t_upstream_headers, t_upstream_idle

    @staticmethod
    @cython.locals(self=Exchange, framing=int, clen=Py_ssize_t, flags=int)
    cdef Exchange new(ClientConnection conn, object snapshot, bytes method, int minor,
                      list headers, tuple analysed)


@cython.final
cdef class ClientConnection(HeadCollector):
    cdef public object transport, _plane, _loop, _time, _parser, _snap, _reject
    cdef public object _pending_error, _queue
    cdef dict _pools
    cdef object _lim_snap
    cdef Py_ssize_t _max_request_line
    cdef double _t_request_headers, _t_client_body_idle, _t_client_idle
    cdef double _t_connect, _t_upstream_headers, _t_upstream_idle
    cdef public bytes _client_ip, _proto, _url, _held
    cdef public Py_ssize_t _head_raw, _begun, _head_limit, _raw_left
    cdef public Exchange _parsing, _active
    cdef public bint _no_more, _close_asked, _closing, writing_paused
    cdef public int _pause_bits, deadline_kind, _saved_kind, up_kind
    cdef public double deadline, _saved_deadline, up_deadline, up_last

    # asyncio and httptools call these by name: cpdef keeps them Python-visible while
    # their locals get C types.
    @cython.locals(ex=Exchange, ok=bint)
    cpdef data_received(self, data)
    @cython.locals(ex=Exchange)
    cpdef eof_received(self)
    @cython.locals(ex=Exchange, queued=Exchange)
    cpdef connection_lost(self, exc)
    @cython.locals(ex=Exchange)
    cpdef pause_writing(self)
    @cython.locals(ex=Exchange)
    cpdef resume_writing(self)
    cpdef on_message_begin(self)
    cpdef on_url(self, bytes url)
    @cython.locals(ex=Exchange, minor=int, result=int)
    cpdef on_headers_complete(self)
    @cython.locals(ex=Exchange, up=UpstreamConnection, n=Py_ssize_t, received=Py_ssize_t)
    cpdef on_body(self, bytes data)
    @cython.locals(ex=Exchange, up=UpstreamConnection)
    cpdef on_message_complete(self)
    @cython.locals(ex=Exchange, kind=int, started=bint)
    cpdef client_timeout(self)
    @cython.locals(ex=Exchange, kind=int, started=bint, idle_until=double)
    cpdef upstream_timeout(self, double now)
    @cython.locals(ex=Exchange)
    cpdef abort(self)

    @cython.locals(left=Py_ssize_t, n=Py_ssize_t)
    cdef bytes _relay_raw(self, bytes data)
    @cython.locals(ex=Exchange)
    cdef bint _feed_sliced(self, bytes data) except -1
    @cython.locals(was_in_head=bint, at_boundary=bint)
    cdef bint _feed(self, bytes data) except -1
    cdef void _cache_snapshot(self, snap) except *
    @cython.locals(max_body=Py_ssize_t, cluster=Cluster, now_ns=int64_t, priority=Py_ssize_t,
                   cohort=Py_ssize_t)
    cdef void _start(self, Exchange ex) except *
    # The admission queue (pure Python) calls these two by name.
    @cython.locals(ex=Exchange)
    cpdef admitted(self, waiter, Lease lease)
    @cython.locals(ex=Exchange)
    cpdef refused(self, waiter, refusal)
    @cython.locals(pool=UpstreamPool, now=double)
    cdef void _leased(self, Exchange ex, Lease gate) except *
    @cython.locals(body=bytes, first=bytes)
    cdef bytes first_upstream_bytes(self, Exchange ex)
    cdef bint may_keep_alive(self, Exchange ex) except -1
    cdef void response_started(self) except *
    cdef void response_done(self, Exchange ex) except *
    cdef void upstream_failed(self, Exchange ex, UpstreamConnection conn,
                              bint malformed=*) except *
    cdef void connect_failed(self, Exchange ex, exc) except *
    @cython.locals(pool=UpstreamPool, tried=tuple, cluster=Cluster, lease=Lease)
    cdef bint _retry(self, Exchange ex, int outcome) except -1
    cdef void pause_for_upstream(self) except *
    cdef void resume_for_upstream(self) except *
    @cython.locals(lease=Lease)
    cdef void _end_lease(self, Exchange ex, int outcome) except *
    @cython.locals(waiter=object)
    cdef void _finish(self, Exchange ex) except *
    @cython.locals(up=UpstreamConnection)
    cdef void _abandon(self, Exchange ex, int outcome) except *
    @cython.locals(ex=Exchange)
    cdef void _next(self) except *
    cdef void _local_reply(self, Exchange ex, err) except *
    cdef void _fail(self, Exchange ex, err) except *
    cdef void _send_error(self, err, bint head_only=*) except *
    cdef void _linger(self) except *
    @cython.locals(ex=Exchange, started=bint)
    cdef void _parse_failed(self, err) except *
    @cython.locals(started=bint)
    cdef void _body_too_large(self, Exchange ex) except *
    cdef void _close(self) except *
    cdef void _pause(self, int bit) except *
    cdef void _resume(self, int bit) except *
