/* xxHash64 (Yann Collet), written from the specification
 * https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md (XXH64, §2-§4).
 *
 * Owns the 64-bit key hash of lbproxy's selector core: stable across processes, machines
 * and releases (unlike Python's salted hash()), so every proxy maps a key to the same
 * backend. Output equals the reference XXH64(); tests pin the xxhsum sanity vectors.
 * Little-endian lanes are read with memcpy (no alignment assumption); big-endian hosts
 * byte-swap them, so the hash is the same everywhere.
 */
#ifndef LBPROXY_XXHASH64_H
#define LBPROXY_XXHASH64_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LB_XXH_P1 0x9E3779B185EBCA87ULL
#define LB_XXH_P2 0xC2B2AE3D27D4EB4FULL
#define LB_XXH_P3 0x165667B19E3779F9ULL
#define LB_XXH_P4 0x85EBCA77C2B2AE63ULL
#define LB_XXH_P5 0x27D4EB2F165667C5ULL

static inline uint64_t lb_xxh_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t lb_xxh_read64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint64_t lb_xxh_read32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return (uint64_t)v;
}

static inline uint64_t lb_xxh_round(uint64_t acc, uint64_t lane) {
    acc += lane * LB_XXH_P2;
    acc = lb_xxh_rotl(acc, 31);
    return acc * LB_XXH_P1;
}

static inline uint64_t lb_xxh_merge(uint64_t acc, uint64_t val) {
    acc ^= lb_xxh_round(0, val);
    return acc * LB_XXH_P1 + LB_XXH_P4;
}

static inline uint64_t lb_xxh64(const void *data, size_t len, uint64_t seed) {
    const unsigned char *p = (const unsigned char *)data;
    const unsigned char *end = p + len;
    uint64_t h;

    if (len >= 32) {
        /* Four independent lanes over 32-byte stripes (spec §3 step 1-3). */
        const unsigned char *limit = end - 32;
        uint64_t v1 = seed + LB_XXH_P1 + LB_XXH_P2;
        uint64_t v2 = seed + LB_XXH_P2;
        uint64_t v3 = seed;
        uint64_t v4 = seed - LB_XXH_P1;
        do {
            v1 = lb_xxh_round(v1, lb_xxh_read64(p));
            v2 = lb_xxh_round(v2, lb_xxh_read64(p + 8));
            v3 = lb_xxh_round(v3, lb_xxh_read64(p + 16));
            v4 = lb_xxh_round(v4, lb_xxh_read64(p + 24));
            p += 32;
        } while (p <= limit);
        h = lb_xxh_rotl(v1, 1) + lb_xxh_rotl(v2, 7) + lb_xxh_rotl(v3, 12) + lb_xxh_rotl(v4, 18);
        h = lb_xxh_merge(h, v1);
        h = lb_xxh_merge(h, v2);
        h = lb_xxh_merge(h, v3);
        h = lb_xxh_merge(h, v4);
    } else {
        h = seed + LB_XXH_P5;
    }
    h += (uint64_t)len;

    /* Remaining input (spec §3 step 5), then the avalanche (step 6). */
    while (p + 8 <= end) {
        h ^= lb_xxh_round(0, lb_xxh_read64(p));
        h = lb_xxh_rotl(h, 27) * LB_XXH_P1 + LB_XXH_P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= lb_xxh_read32(p) * LB_XXH_P1;
        h = lb_xxh_rotl(h, 23) * LB_XXH_P2 + LB_XXH_P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * LB_XXH_P5;
        h = lb_xxh_rotl(h, 11) * LB_XXH_P1;
        p++;
    }
    h ^= h >> 33;
    h *= LB_XXH_P2;
    h ^= h >> 29;
    h *= LB_XXH_P3;
    h ^= h >> 32;
    return h;
}

#endif /* LBPROXY_XXHASH64_H */
