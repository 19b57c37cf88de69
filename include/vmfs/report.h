/* vmfs — the facts model behind info, info.json and vmfs-info.
 *
 * A report is a tree of objects, arrays and scalar values, built by the
 * layers that know the facts and rendered twice: as indented plain text for
 * people and as JSON for scripts.  Both renderers read the same tree, so the
 * two can never disagree.
 *
 * Keys are snake_case identifiers; the text renderer shows them with spaces.
 * Values added with rep_set_size are byte counts: JSON numbers, and in text
 * "N bytes (H)" with H the human size.
 *
 * Threads: a report is built by one thread; once built it is read-only. */
#ifndef VMFS_REPORT_H
#define VMFS_REPORT_H

#include "vmfs/common.h"

struct rep;

struct rep *rep_new_object(void);
void rep_free(struct rep *r);

/* Object members.  Setting a key that exists replaces nothing: keys are
 * appended in order and callers do not repeat them. */
void rep_set_str(struct rep *obj, const char *key, const char *val);
void rep_set_strf(struct rep *obj, const char *key, const char *fmt, ...) VMFS_PRINTF(3, 4);
void rep_set_u64(struct rep *obj, const char *key, uint64_t val);
void rep_set_i64(struct rep *obj, const char *key, int64_t val);
void rep_set_size(struct rep *obj, const char *key, uint64_t bytes);
void rep_set_bool(struct rep *obj, const char *key, bool val);
void rep_set_null(struct rep *obj, const char *key);
struct rep *rep_set_object(struct rep *obj, const char *key);
struct rep *rep_set_array(struct rep *obj, const char *key);

/* Returns the member named key, or NULL. */
struct rep *rep_get(const struct rep *obj, const char *key);
/* The string a value holds, or NULL when it is not a string. */
const char *rep_str(const struct rep *r);

/* Array elements. */
struct rep *rep_add_object(struct rep *arr);
void rep_add_str(struct rep *arr, const char *val);
void rep_add_strf(struct rep *arr, const char *fmt, ...) VMFS_PRINTF(2, 3);
void rep_add_u64(struct rep *arr, uint64_t val);
size_t rep_len(const struct rep *r);  /* members or elements */

/* Renderers: return malloc'ed, NUL-terminated text ending in a newline. */
char *rep_to_json(const struct rep *r);
char *rep_to_text(const struct rep *r);

#endif
