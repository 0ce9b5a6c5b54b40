/* The portable and scalar-POPCNT sets' tile of the binary products (see isa.h: tile_fn). */
#include "isa.h"

static AI void tile_scalar_body(const uint64_t *a, size_t kw, const uint64_t *b, int op,
                                int32_t *c, size_t ldc, int mr, int nb) {
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nb; j++) {
            int32_t s[8] = {0};
            const uint64_t *bj = b + (size_t)j * kw * 8, *ar = a + (size_t)r * kw;
            for (size_t w = 0; w < kw; w++)
                for (int l = 0; l < 8; l++) {
                    uint64_t x = op == OP_AND ? (ar[w] & bj[w * 8 + l]) : (ar[w] ^ bj[w * 8 + l]);
                    s[l] += __builtin_popcountll(x);
                }
            memcpy(c + (size_t)r * ldc + 8 * j, s, sizeof s);
        }
}

void tile_generic(const uint64_t *a, size_t kw, const uint64_t *b, int op, int32_t *c,
                  size_t ldc, int mr, int nb) {
    tile_scalar_body(a, kw, b, op, c, ldc, mr, nb);
}

#ifdef BB_X86
/* Same C as tile_generic; inlined here __builtin_popcountll becomes the POPCNT instruction. */
__attribute__((target("popcnt"))) void tile_popcnt(const uint64_t *a, size_t kw,
                                                   const uint64_t *b, int op, int32_t *c,
                                                   size_t ldc, int mr, int nb) {
    tile_scalar_body(a, kw, b, op, c, ldc, mr, nb);
}
#endif
