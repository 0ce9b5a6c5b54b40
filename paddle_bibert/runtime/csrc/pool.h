/*
 * The kernels' thread pool (see pool.c): a job is n independent chunks; pool_run returns when
 * all are done.
 */
#ifndef BIBERT_POOL_H
#define BIBERT_POOL_H

#include <stddef.h>

typedef void task_fn(void *ctx, long chunk, int tid);
#define MAX_THREADS 256

/* Rows a chunk takes, in the GEMM and in the elementwise kernels alike, so each thread packs
 * and normalizes the rows whose products it computes: ROW_BLOCK, or fewer (a multiple of
 * ROW_UNIT, the GEMM's row tile) where a job of that many would leave a thread of the pool
 * without two chunks (a sentence of 32 tokens was one GEMM chunk: the second thread idle). */
#define ROW_BLOCK 32
#define ROW_UNIT 4
size_t row_block(size_t rows);
/* Row chunks of the elementwise kernels (packing, LayerNorm, embedding); a job of at most
 * ROW_SPLIT values stays whole. From 8k values: MiniLM's 64 and 128 tokens of 384 split too
 * (from 64k they ran on one thread: a sixth of the main job's student's two-thread forward). */
#define ROW_SPLIT (1 << 13)
#define ROW_CHUNK(rows, n) ((rows) * (n) > ROW_SPLIT ? row_block(rows) : (rows))

void pool_run(task_fn *fn, void *ctx, long n);
/* Threads a job uses (tid < pool_threads()); setting them stops the workers, which start again
 * on the next job. */
int pool_threads(void);
void pool_set_threads(int n);
/* Once, at import: the default thread count, and a fork handler (a child has no workers). */
void pool_init(void);

#endif
