# The C declarations of lbproxy/codes.py's values, for the compiled modules to cimport.
# Keep each NAME = VALUE line equal to codes.py: tests/test_native.py compares them.

cdef enum:
    OK = 0
    E_BAD_REQUEST = 1
    E_TRANSFER_CODING = 2
    E_EXPECTATION = 3

    FRAME_NONE = 0
    FRAME_LENGTH = 1
    FRAME_CHUNKED = 2
    FRAME_CLOSE = 3

    F_CLOSE = 1
    F_EXPECT_CONTINUE = 2
    F_UPGRADE = 4

    OUTCOME_OK = 0
    OUTCOME_HTTP_5XX = 1
    OUTCOME_CONNECT_FAILED = 2
    OUTCOME_RESET = 3
    OUTCOME_TIMEOUT = 4
    OUTCOME_CLIENT_ABORT = 5
    N_OUTCOMES = 6
