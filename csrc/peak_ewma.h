/* Peak-EWMA arithmetic of lbproxy's selector core (tower's load/peak_ewma.rs).
 *
 * Kept in C with floating-point contraction off so `a*b + c*d` is never fused into an FMA:
 * the pure-Python twin (lbproxy/_selectors_py.py) must produce the same doubles bit for bit.
 */
#ifndef LBPROXY_PEAK_EWMA_H
#define LBPROXY_PEAK_EWMA_H

#include <math.h>
#include <stdint.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#define LB_NO_CONTRACT
#elif defined(__GNUC__)
#define LB_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define LB_NO_CONTRACT
#endif

/* The estimate decayed toward 0 over `elapsed_ns` (a zero-latency sample, as tower's decay). */
LB_NO_CONTRACT static inline double lb_ewma_decayed(double ewma, int64_t elapsed_ns,
                                                    double decay_ns) {
    double e = elapsed_ns > 0 ? (double)elapsed_ns : 0.0;
    return ewma * exp(-e / decay_ns);
}

/* A new sample: a peak replaces the estimate, otherwise it moves toward the sample by
 * 1 - exp(-elapsed / decay). */
LB_NO_CONTRACT static inline double lb_ewma_update(double ewma, double rtt, int64_t elapsed_ns,
                                                   double decay_ns) {
    if (rtt > ewma) {
        return rtt;
    }
    double e = elapsed_ns > 0 ? (double)elapsed_ns : 0.0;
    double decay = exp(-e / decay_ns);
    return ewma * decay + rtt * (1.0 - decay);
}

#endif /* LBPROXY_PEAK_EWMA_H */
