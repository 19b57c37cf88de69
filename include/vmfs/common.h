/* vmfs — shared helpers: byte order, overflow-checked arithmetic, cleanup,
 * logging.  Everything here is safe to call from any thread. */
#ifndef VMFS_COMMON_H
#define VMFS_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VMFS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define VMFS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define VMFS_MAX(a, b) ((a) > (b) ? (a) : (b))
#define VMFS_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Frees *p when the variable goes out of scope. */
static inline void vmfs_cleanup_free(void *p) { free(*(void **)p); }
#define CLEANUP_FREE __attribute__((cleanup(vmfs_cleanup_free)))

/* Little- and big-endian loads from unaligned, untrusted memory. */
static inline uint16_t get_le16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)(b[0] | b[1] << 8);
}
static inline uint32_t get_le32(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
           (uint32_t)b[3] << 24;
}
static inline uint64_t get_le64(const void *p)
{
    const uint8_t *b = p;
    return (uint64_t)get_le32(b) | (uint64_t)get_le32(b + 4) << 32;
}
static inline uint16_t get_be16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)(b[0] << 8 | b[1]);
}
static inline uint32_t get_be32(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
           (uint32_t)b[3];
}
static inline uint64_t get_be64(const void *p)
{
    const uint8_t *b = p;
    return (uint64_t)get_be32(b) << 32 | (uint64_t)get_be32(b + 4);
}

/* Overflow-checked arithmetic: return true when the result does not fit. */
#define ckd_add_u64(r, a, b) __builtin_add_overflow((uint64_t)(a), (uint64_t)(b), (r))
#define ckd_mul_u64(r, a, b) __builtin_mul_overflow((uint64_t)(a), (uint64_t)(b), (r))

/* True when [off, off+len) lies inside [0, size). */
static inline bool range_in(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

/* Whether the n bytes at p (n a multiple of 64) are all zero, 64 at a
 * time: for tables that are mostly zeros. */
static inline bool all_zero64(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i += 64) {
        uint64_t w[8];
        memcpy(w, b + i, sizeof w);
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return false;
    }
    return true;
}

static inline bool is_pow2_u64(uint64_t v) { return v && !(v & (v - 1)); }

/* Allocation that aborts on exhaustion: out of memory is not an image
 * problem and there is nothing sensible to serve without memory. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) VMFS_PRINTF(1, 2);

/* Logging: one sink, chosen once before threads start (stderr by default,
 * syslog after vmfs_log_use_syslog()).  Thread-safe. */
enum vmfs_log_level { VMFS_LOG_ERR, VMFS_LOG_WARN, VMFS_LOG_INFO, VMFS_LOG_DEBUG };
void vmfs_log_use_syslog(const char *ident);
void vmfs_log_set_debug(bool on);
void vmfs_log(enum vmfs_log_level lvl, const char *fmt, ...) VMFS_PRINTF(2, 3);

/* Nanoseconds on the monotonic clock, for timeouts and durations. */
uint64_t vmfs_now_ns(void);

/* Human-readable size, e.g. "2.0 GiB"; buf must hold 32 bytes. */
const char *vmfs_human_size(uint64_t bytes, char buf[32]);

#endif
