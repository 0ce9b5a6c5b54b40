/* A packed model's forward in one call (see forward.h): the operations of ops.h in the order
 * PackedBert._forward calls them, on buffers made once per call, without the ~60 Python calls
 * (and their checks and arrays) a forward otherwise takes: for one short sentence those took
 * more than half of a MiniLM forward. */
#include "forward.h"

#include "ops.h"

/* y = the linear's float outputs [M, n]. */
static void linear_floats(const plan_linear *l, const uint64_t *a, size_t M, float *y) {
    popc_gemm(a, M, nwords(l->k), l->w, l->n, l->unsig ? OP_AND : OP_XOR, NULL, y, NULL, l->alpha,
              l->bias, (long)l->k, l->unsig, NULL, l->w4);
}

/* The bits the linear writes [M, nwords(n)] (pad bits left as they are: 0). */
static void linear_bits(const plan_linear *l, const uint64_t *a, size_t M, uint64_t *bits) {
    const outq_t cut = {NULL, 1.0f, Q_SIGN, ACT_NONE, l->lo, l->hi};
    const outq_t *q = l->lo ? &cut : l->q.kind >= 0 ? &l->q : NULL;
    popc_gemm(a, M, nwords(l->k), l->w, l->n, l->unsig ? OP_AND : OP_XOR, NULL, NULL,
              (uint32_t *)bits, l->alpha, l->bias, (long)l->k, l->unsig, q, l->w4);
}

/* The bits of x [M, n] through a quantizer. */
static void quant_bits(const plan_quant *q, const float *x, size_t M, size_t n, uint64_t *bits) {
    if (!q->shift && q->kind == Q_SIGN) pack_rows(x, M, n, bits);
    else pack_act(x, M, n, q->shift, q->scale, q->kind, ACT_NONE, bits);
}

/* out = LayerNorm(x + res), and the bits of out through nq quantizers into bits[0..nq). */
static void norm(const plan_norm *ln, const float *x, const float *res, size_t T, size_t H,
                 float *out, const plan_quant *q, int nq, uint64_t *const *bits) {
    ln_bits_t lb[3];
    for (int i = 0; i < nq; i++) lb[i] = (ln_bits_t){q[i].shift, q[i].scale, q[i].kind, bits[i]};
    layer_norm(x, res, T, H, ln->g, ln->b, ln->eps, out, nq, lb);
}

/* The packed Q | K | V of a layer [T, nwords(3H)] from its inputs' bits xb (tmp: [T, nwords(H)]
 * bits, or [T, H] floats; y3: [T, 3H] floats where the three rows are not whole words). */
static void qkv_bits(const plan_layer *ly, uint64_t *const *xb, size_t T, size_t H,
                     uint64_t *tmp, float *y3, uint64_t *qkv) {
    if (ly->nqkv == 1) {
        linear_bits(&ly->qkv[0], xb[0], T, qkv);
        return;
    }
    if (H % 64) { /* each product's floats into its third of a row, then the row's bits */
        for (int m = 0; m < 3; m++) {
            linear_floats(&ly->qkv[m], xb[m], T, (float *)tmp);
            for (size_t t = 0; t < T; t++)
                memcpy(y3 + (t * 3 + m) * H, (float *)tmp + t * H, H * sizeof(float));
        }
        const plan_quant q = {ly->qkv_shift, 1.0f, Q_SIGN};
        quant_bits(&q, y3, T, 3 * H, qkv);
        return;
    }
    const size_t w = H / 64, rw = nwords(3 * H); /* whole words: the rows side by side */
    for (int m = 0; m < 3; m++) {
        linear_bits(&ly->qkv[m], xb[m], T, tmp);
        for (size_t t = 0; t < T; t++) memcpy(qkv + t * rw + m * w, tmp + t * w, w * 8);
    }
}

/* The buffers of one call: float rows, then bit rows (zeroed: a product leaves its pad bits).
 * tmp holds one Q/K/V product's output: bits, or floats where y3 is needed. */
typedef struct {
    float *x, *y, *ctx, *first, *y3;
    uint64_t *xb[3], *qkv, *tmp, *cb, *hin, *hb, *pb;
} fwd_bufs;

static int fwd_alloc(const plan_t *p, size_t B, size_t T, fwd_bufs *f, void **fl, void **bt) {
    const size_t H = p->H, nh = nwords(H), n3 = nwords(3 * H), nf = nwords(p->F);
    int floats3 = 0; /* some layer's Q/K/V rows are not whole words */
    for (size_t i = 0; i < p->nl; i++) floats3 |= p->layers[i].nqkv == 3 && H % 64;
    const size_t ntmp = floats3 ? (T * H + 1) / 2 : T * nh; /* words */
    *fl = malloc((3 * T * H + B * H + (floats3 ? 3 * T * H : 0)) * sizeof(float));
    *bt = calloc(5 * T * nh + ntmp + T * n3 + T * nf + B * nh, 8);
    if (!*fl || !*bt) return -1;
    float *fp = *fl;
    f->x = fp, f->ctx = fp + T * H, f->y = fp + 2 * T * H, f->first = fp + 3 * T * H;
    f->y3 = floats3 ? f->first + B * H : NULL;
    uint64_t *bp = *bt;
    for (int i = 0; i < 3; i++) f->xb[i] = bp + i * T * nh;
    f->qkv = bp + 3 * T * nh;
    f->tmp = f->qkv + T * n3, f->cb = f->tmp + ntmp, f->hin = f->cb + T * nh;
    f->hb = f->hin + T * nh, f->pb = f->hb + T * nf;
    return 0;
}

/* One layer, x [T, H] in place (LayerNorm reads x and writes it: rows one at a time, each read
 * whole before it is written), its Q/K/V inputs' bits in f->xb; then the next layer's. */
static int layer(const plan_t *p, size_t i, const uint8_t *keep, size_t B, size_t L,
                 fwd_bufs *f) {
    const plan_layer *ly = p->layers + i;
    const size_t T = B * L, H = p->H;
    qkv_bits(ly, f->xb, T, H, f->tmp, f->y3, f->qkv);
    if (attention(f->qkv, keep, B, L, H, p->heads, ly->mode, ly->sscale, ly->mscale, ly->cscale,
                  ly->table, p->att_tables, f->ctx))
        return -1;
    quant_bits(&ly->ctx_q, f->ctx, T, H, f->cb);
    linear_floats(&ly->out, f->cb, T, f->y);
    norm(&ly->ln1, f->x, f->y, T, H, f->x, &ly->ffn_q, 1, &f->hin);
    linear_bits(&ly->ffn_in, f->hin, T, f->hb);
    linear_floats(&ly->ffn_out, f->hb, T, f->y);
    const int last = i + 1 == p->nl;
    norm(&ly->ln2, f->x, f->y, T, H, f->x, p->qkv_q + 3 * (i + 1),
         last ? 0 : p->layers[i + 1].nqkv, f->xb);
    return 0;
}

int forward(const plan_t *p, const int64_t *ids, const int64_t *tt, const uint8_t *keep, size_t B,
            size_t L, float *pooled) {
    const size_t T = B * L, H = p->H;
    fwd_bufs f;
    void *fl = NULL, *bt = NULL;
    int rc = fwd_alloc(p, B, T, &f, &fl, &bt);
    if (!rc) {
        embed(ids, tt, T, L, p->word_bits, p->word_alpha, H, p->pos, p->tok, f.y);
        norm(&p->emb_ln, f.y, NULL, T, H, f.x, p->qkv_q, p->nl ? p->layers[0].nqkv : 0, f.xb);
        for (size_t i = 0; i < p->nl && !rc; i++) rc = layer(p, i, keep, B, L, &f);
    }
    if (!rc) { /* the pooler, on each sequence's first token */
        for (size_t b = 0; b < B; b++) memcpy(f.first + b * H, f.x + b * L * H, H * sizeof(float));
        quant_bits(&p->pool_q, f.first, B, H, f.pb);
        linear_floats(&p->pooler, f.pb, B, pooled);
    }
    free(fl);
    free(bt);
    return rc;
}
