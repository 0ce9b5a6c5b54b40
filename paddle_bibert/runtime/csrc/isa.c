/* The kernel sets (see isa.h) and the choice among them. */
#include "isa.h"

const isa_t ISAS[] = {
#ifdef BB_X86
    {"avx512", tile_avx512, lin_tile_avx512, pack_avx2, scores_avx512, context_avx512,
     ln_row_avx2, pack_act_row_avx2, embed_row_avx512, count_range_avx2, table_lanes_avx512,
     below_avx2, NULL, NULL, NULL, NULL, NULL, NULL, NULL},
    {"avx2", tile_avx2, lin_tile_avx2, pack_avx2, scores_avx2, context_avx2, ln_row_avx2,
     pack_act_row_avx2, embed_row_avx2, count_range_avx2, table_lanes_avx2, below_avx2,
     nib_tile_avx2, nib_rows_avx2, nib_tile_tables, nib_pair_tables, nib_panel_avx2, lin_epi_avx2,
     nib_lin_4x2},
    {"popcnt", tile_popcnt, NULL, pack_generic, scores_popcnt, context_popcnt, ln_row_generic,
     pack_act_row_generic, embed_row_generic, count_range_generic, table_lanes_generic,
     below_generic, NULL, NULL, NULL, NULL, NULL, NULL, NULL},
#endif
    {"generic", tile_generic, NULL, pack_generic, scores_generic, context_generic, ln_row_generic,
     pack_act_row_generic, embed_row_generic, count_range_generic, table_lanes_generic,
     below_generic, NULL, NULL, NULL, NULL, NULL, NULL, NULL},
};
const int N_ISAS = (int)(sizeof ISAS / sizeof ISAS[0]);
const isa_t *g_isa = &ISAS[sizeof ISAS / sizeof ISAS[0] - 1];

int isa_supported(const isa_t *isa) {
#ifdef BB_X86
    __builtin_cpu_init();
#ifdef BB_EMULATE_AVX512
    if (!strcmp(isa->name, "avx512")) /* SIMDe's AVX-512 on AVX2 (simd.h) */
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("popcnt");
#endif
    if (!strcmp(isa->name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("popcnt");
    if (!strcmp(isa->name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("popcnt");
    if (!strcmp(isa->name, "popcnt")) return __builtin_cpu_supports("popcnt");
#endif
    return !strcmp(isa->name, "generic");
}
