/* The kernels' thread pool.
 *
 * A job is n independent chunks, cut into one contiguous range per thread (the caller is
 * thread 0). Each thread takes the chunks of its own range first, then those left in the
 * others' ranges, from atomic counters; the caller then waits only for chunks already taken.
 * The kernels number their chunks row block first, so thread t works on the same rows in
 * every kernel of a forward and reads what it wrote itself: where a host puts two vCPUs on
 * core complexes that share no cache, each line one thread hands the other costs a trip
 * across the chip, which took about a tenth of a BERT-base forward at two threads when one
 * shared counter dealt each chunk to whichever thread asked (a 2 vCPU Zen 2 EPYC). A worker
 * that is not running (the CPU is shared, or it is still waking up) delays nothing: the
 * others take its chunks, and the job never waits for a thread to arrive, unlike a fork/join
 * barrier (OpenMP), which on an oversubscribed CPU costs a scheduler time slice per parallel
 * region. A counter holds (job generation << 32 | next chunk), so a worker late for one job
 * cannot take chunks of the next. Jobs from concurrent callers do not queue: a caller that
 * finds the pool busy runs its job alone. Its size: BIBERT_NUM_THREADS, else OMP_NUM_THREADS, else
 * the number of CPUs. */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "pool.h"

static struct {
    pthread_mutex_t mu, run_mu;
    pthread_cond_t cv;
    pthread_t th[MAX_THREADS];
    int want, started, stop;
    uint64_t gen; /* written under mu, read atomically */
    task_fn *fn;
    void *ctx;
    long n, nt; /* chunks, threads sharing them (ranges) */
    long done;  /* atomic: chunks of the current job finished */
    /* atomic, one per range (a line each: its owner takes from it at every chunk) */
    struct {
        uint64_t next;
    } __attribute__((aligned(64))) cur[MAX_THREADS];
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_ia32_pause();
#endif
}

/* Range r of a job of n chunks among nt threads: [range_at(n, nt, r), range_at(n, nt, r + 1)). */
static long range_at(long n, long nt, long r) { return n * r / nt; }

static long grab_range(uint64_t gen, long r, long end) {
    uint64_t v = __atomic_load_n(&P.cur[r].next, __ATOMIC_ACQUIRE);
    for (;;) {
        if ((v >> 32) != (gen & 0xffffffffULL) || (long)(v & 0xffffffffULL) >= end) return -1;
        if (__atomic_compare_exchange_n(&P.cur[r].next, &v, v + 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return (long)(v & 0xffffffffULL);
    }
}

/* The next chunk for thread tid: from its own range, else from the others' in turn; -1 when
 * none is left (or the job is no longer gen). */
static long grab(uint64_t gen, long n, long nt, int tid) {
    for (long k = 0; k < nt; k++) {
        const long r = (tid + k) % nt;
        const long i = grab_range(gen, r, range_at(n, nt, r + 1));
        if (i >= 0) return i;
    }
    return -1;
}

static void *pool_worker(void *arg) {
    const int tid = (int)(intptr_t)arg;
    uint64_t seen = 0;
    for (;;) {
        /* Back-to-back jobs (one per kernel call) arrive within microseconds: spin briefly
         * before sleeping. */
        for (int i = 0; i < 4000 && __atomic_load_n(&P.gen, __ATOMIC_ACQUIRE) == seen; i++)
            cpu_relax();
        pthread_mutex_lock(&P.mu);
        while (P.gen == seen && !P.stop) pthread_cond_wait(&P.cv, &P.mu);
        if (P.stop) {
            pthread_mutex_unlock(&P.mu);
            return NULL;
        }
        seen = P.gen;
        task_fn *fn = P.fn;
        void *ctx = P.ctx;
        const long n = P.n, nt = P.nt;
        pthread_mutex_unlock(&P.mu);
        for (long i; (i = grab(seen, n, nt, tid)) >= 0;) {
            fn(ctx, i, tid);
            __atomic_add_fetch(&P.done, 1, __ATOMIC_ACQ_REL);
        }
    }
}

static void pool_stop(void) { /* call with run_mu held */
    pthread_mutex_lock(&P.mu);
    P.stop = 1;
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 1; i < P.started; i++) pthread_join(P.th[i], NULL);
    P.started = 0;
    P.stop = 0;
}

static int default_threads(void) {
    const char *names[] = {"BIBERT_NUM_THREADS", "OMP_NUM_THREADS"};
    for (int i = 0; i < 2; i++) {
        const char *e = getenv(names[i]);
        if (e && atoi(e) > 0) return atoi(e) < MAX_THREADS ? atoi(e) : MAX_THREADS;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n < MAX_THREADS ? (int)n : MAX_THREADS);
}

void pool_run(task_fn *fn, void *ctx, long n) {
    if (n <= 0) return;
    if (n == 1 || P.want <= 1 || pthread_mutex_trylock(&P.run_mu)) {
        for (long i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    if (!P.started) { /* workers start on first use */
        P.started = 1;
        for (int i = 1; i < P.want; i++) {
            if (pthread_create(&P.th[i], NULL, pool_worker, (void *)(intptr_t)i)) break;
            P.started = i + 1;
        }
    }
    pthread_mutex_lock(&P.mu);
    uint64_t gen = P.gen + 1;
    const long nt = P.started < n ? P.started : n;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.nt = nt;
    __atomic_store_n(&P.done, 0, __ATOMIC_RELAXED);
    for (long r = 0; r < nt; r++)
        __atomic_store_n(&P.cur[r].next, (gen & 0xffffffffULL) << 32 | (uint64_t)range_at(n, nt, r),
                         __ATOMIC_RELEASE);
    __atomic_store_n(&P.gen, gen, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    long mine = 0;
    for (long i; (i = grab(gen, n, nt, 0)) >= 0; mine++) fn(ctx, i, 0);
    __atomic_add_fetch(&P.done, mine, __ATOMIC_ACQ_REL);
    for (long spins = 0; __atomic_load_n(&P.done, __ATOMIC_ACQUIRE) < n; spins++) {
        if (spins < 20000) cpu_relax();
        else sched_yield(); /* a worker holding a chunk was descheduled: let it run */
    }
    pthread_mutex_unlock(&P.run_mu);
}

/* A forked child has none of the workers and maybe a mutex held by one: start afresh. */
static void pool_atfork_child(void) {
    pthread_mutex_init(&P.mu, NULL);
    pthread_mutex_init(&P.run_mu, NULL);
    pthread_cond_init(&P.cv, NULL);
    P.started = 0;
    P.stop = 0;
}

void pool_set_threads(int n) {
    pthread_mutex_lock(&P.run_mu);
    if (P.started) pool_stop();
    P.want = n < 1 ? 1 : (n < MAX_THREADS ? n : MAX_THREADS);
    pthread_mutex_unlock(&P.run_mu);
}

int pool_threads(void) { return P.want; }

size_t row_block(size_t rows) {
    const size_t two = 2 * (size_t)P.want; /* chunks wanted: two a thread */
    if (P.want <= 1 || rows == 0 || rows >= two * ROW_BLOCK) return ROW_BLOCK;
    const size_t r = ((rows + two - 1) / two + ROW_UNIT - 1) / ROW_UNIT * ROW_UNIT;
    return r < ROW_BLOCK ? r : ROW_BLOCK;
}

void pool_init(void) {
    P.want = default_threads();
    pthread_atfork(NULL, NULL, pool_atfork_child);
}
