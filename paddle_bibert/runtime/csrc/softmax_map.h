/* BiT's softmax attention map, one query row at a time (see softmax_map.c). */
#ifndef BIBERT_SOFTMAX_MAP_H
#define BIBERT_SOFTMAX_MAP_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#define NO_CUT LONG_MIN

long softmax_map_row(const int32_t *cnt, size_t L, long dh, const uint8_t *kp, int any,
                     double sscale, const double *E, float mscale, uint8_t *on, uint64_t *Ai);
void softmax_table(long dh, double sscale, double *E);
/* Doubles in softmax_table's table: dh + 1 rows of dh + 1 exponentials, then a row of flags. */
static inline size_t softmax_table_len(long dh) { return (size_t)(dh + 2) * (size_t)(dh + 1); }

#endif
