/* The one-call forward's plan (forward.h) from the nested tuples paddle_bibert/runtime/plan.py
 * makes of a loaded model: each array's buffer held for the plan's life, its size checked
 * against the dimensions it is used with, so forward() reads nothing past an array. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "forward.h"
#include "plan.h"
#include "softmax_map.h"

typedef struct {
    plan_t p;
    Py_buffer *bufs; /* held */
    size_t nbufs, cap;
    size_t vocab, npos, ntypes;
} plan_obj;

static const char *CAPSULE = "paddle_bibert.plan";

static void plan_free(plan_obj *po) {
    for (size_t i = 0; i < po->nbufs; i++) PyBuffer_Release(&po->bufs[i]);
    free(po->bufs);
    free(po->p.layers);
    free(po->p.qkv_q);
    free(po);
}

static void plan_capsule_free(PyObject *cap) {
    plan_free(PyCapsule_GetPointer(cap, CAPSULE));
}

/* *out = the buffer of o, held, at least bytes long (None, if optional: NULL); 0 with an
 * exception set. */
static int arr(plan_obj *po, PyObject *o, size_t bytes, int optional, const char *what,
               const void *out) {
    const void **dst = (const void **)out;
    *dst = NULL;
    if (o == Py_None && optional) return 1;
    if (po->nbufs == po->cap) {
        Py_buffer *nb = realloc(po->bufs, (po->cap * 2 + 16) * sizeof(Py_buffer));
        if (!nb) return PyErr_NoMemory(), 0;
        po->bufs = nb, po->cap = po->cap * 2 + 16;
    }
    Py_buffer *b = &po->bufs[po->nbufs];
    if (PyObject_GetBuffer(o, b, PyBUF_SIMPLE) < 0) return 0;
    po->nbufs++;
    if ((size_t)b->len < bytes)
        return PyErr_Format(PyExc_ValueError, "plan: %s has %zd bytes, needs %zu", what, b->len,
                            bytes), 0;
    *dst = b->buf;
    return 1;
}

/* Each parser: 0 with an exception set. */
static int parse_quant(plan_obj *po, PyObject *t, size_t n, plan_quant *q) {
    PyObject *sh;
    if (!PyArg_ParseTuple(t, "Ofi", &sh, &q->scale, &q->kind) ||
        !arr(po, sh, n * 4, 1, "a quantizer's shift", &q->shift))
        return 0;
    if (q->kind != Q_SIGN && q->kind != Q_UNSIGNED)
        return PyErr_Format(PyExc_ValueError, "plan: quantizer kind %d", q->kind), 0;
    return 1;
}

static int parse_norm(plan_obj *po, PyObject *t, size_t H, plan_norm *ln) {
    PyObject *g, *b;
    return PyArg_ParseTuple(t, "OOd", &g, &b, &ln->eps) &&
           arr(po, g, H * 4, 0, "a LayerNorm's weight", &ln->g) &&
           arr(po, b, H * 4, 0, "a LayerNorm's bias", &ln->b);
}

/* What the linear's bits go through (None: their signs). */
static int parse_feed(plan_obj *po, PyObject *feed, size_t n, outq_t *q) {
    *q = (outq_t){NULL, 1.0f, -1, ACT_NONE, NULL, NULL};
    if (feed == Py_None) return 1;
    PyObject *sh;
    if (!PyArg_ParseTuple(feed, "Ofii", &sh, &q->scale, &q->kind, &q->act) ||
        !arr(po, sh, n * 4, 1, "a linear's feed shift", &q->shift))
        return 0;
    if ((q->kind != Q_SIGN && q->kind != Q_UNSIGNED) || q->act < ACT_NONE || q->act > ACT_GELU)
        return PyErr_Format(PyExc_ValueError, "plan: feed kind %d, act %d", q->kind, q->act), 0;
    return 1;
}

/* A linear of k inputs and n outputs (both as the forward uses it). */
static int parse_linear(plan_obj *po, PyObject *t, size_t k, size_t n, plan_linear *l) {
    PyObject *w, *w4, *al, *bi, *lo, *hi, *feed;
    Py_ssize_t tn, tk;
    if (!PyArg_ParseTuple(t, "OOnnOOpOOO", &w, &w4, &tn, &tk, &al, &bi, &l->unsig, &lo, &hi,
                          &feed))
        return 0;
    if ((size_t)tn != n || (size_t)tk != k)
        return PyErr_Format(PyExc_ValueError, "plan: a linear of %zd x %zd where the forward "
                            "takes %zu x %zu", tk, tn, k, n), 0;
    const size_t kw = nwords(k);
    l->n = n, l->k = k;
    if (!arr(po, w, (n + 7) / 8 * kw * 64, 0, "a linear's weights", &l->w) ||
        !arr(po, w4, (n + 31) / 32 * 32 * 16 * kw, 1, "a linear's nibble panels", &l->w4) ||
        !arr(po, al, n * 4, 0, "a linear's alpha", &l->alpha) ||
        !arr(po, bi, n * 4, 0, "a linear's bias", &l->bias) ||
        !arr(po, lo, n * 4, 1, "a linear's cut", &l->lo) ||
        !arr(po, hi, n * 4, 1, "a linear's cut", &l->hi))
        return 0;
    if (!l->lo != !l->hi) return PyErr_SetString(PyExc_ValueError, "plan: half a cut"), 0;
    return parse_feed(po, feed, n, &l->q);
}

/* Layer i: its Q/K/V input quantizers into qkv_q[0 .. 3), the rest into ly. */
static int parse_layer(plan_obj *po, PyObject *t, plan_layer *ly, plan_quant *qkv_q) {
    const plan_t *p = &po->p;
    const size_t H = p->H;
    PyObject *qs, *lins, *qsh, *tab, *cq, *out, *ln1, *fq, *fin, *fout, *ln2;
    if (!PyArg_ParseTuple(t, "O!O!OiddfOOOOOOOO", &PyTuple_Type, &qs, &PyTuple_Type, &lins, &qsh,
                          &ly->mode, &ly->sscale, &ly->cscale, &ly->mscale, &tab, &cq, &out, &ln1,
                          &fq, &fin, &fout, &ln2))
        return 0;
    const Py_ssize_t nq = PyTuple_GET_SIZE(qs);
    if ((nq != 1 && nq != 3) || PyTuple_GET_SIZE(lins) != nq)
        return PyErr_SetString(PyExc_ValueError, "plan: one Q/K/V product, or three"), 0;
    if (!arr(po, qsh, 3 * H * 4, 1, "the attention's shifts", &ly->qkv_shift)) return 0;
    if (ly->mode < MODE_BOOL || ly->mode > MODE_SOFTMAX)
        return PyErr_Format(PyExc_ValueError, "plan: attention mode %d", ly->mode), 0;
    ly->nqkv = (int)nq;
    for (Py_ssize_t m = 0; m < nq; m++)
        if (!parse_quant(po, PyTuple_GET_ITEM(qs, m), H, &qkv_q[m]) ||
            !parse_linear(po, PyTuple_GET_ITEM(lins, m), H, nq == 1 ? 3 * H : H, &ly->qkv[m]))
            return 0;
    return arr(po, tab, softmax_table_len((long)(H / p->heads)) * 8, 1, "a softmax table",
               &ly->table) &&
           parse_quant(po, cq, H, &ly->ctx_q) && parse_linear(po, out, H, H, &ly->out) &&
           parse_norm(po, ln1, H, &ly->ln1) && parse_quant(po, fq, H, &ly->ffn_q) &&
           parse_linear(po, fin, H, p->F, &ly->ffn_in) &&
           parse_linear(po, fout, p->F, H, &ly->ffn_out) && parse_norm(po, ln2, H, &ly->ln2);
}

static int parse_embeddings(plan_obj *po, PyObject *t) {
    plan_t *p = &po->p;
    PyObject *wb, *wa, *pos, *tok, *ln;
    Py_ssize_t vocab, npos, ntypes;
    if (!PyArg_ParseTuple(t, "nnnOOOOO", &vocab, &npos, &ntypes, &wb, &wa, &pos, &tok, &ln))
        return 0;
    if (vocab < 1 || npos < 1 || ntypes < 1 || vocab > INT32_MAX || npos > (1 << 24) ||
        ntypes > (1 << 16)) /* (bounded: no size below overflows) */
        return PyErr_Format(PyExc_ValueError, "plan: embedding tables of %zd words, %zd "
                            "positions, %zd token types", vocab, npos, ntypes), 0;
    po->vocab = vocab, po->npos = npos, po->ntypes = ntypes;
    return arr(po, wb, vocab * nwords(p->H) * 8, 0, "the word bits", &p->word_bits) &&
           arr(po, wa, vocab * 4, 0, "the word scales", &p->word_alpha) &&
           arr(po, pos, npos * p->H * 4, 0, "the position table", &p->pos) &&
           arr(po, tok, ntypes * p->H * 4, 0, "the token-type table", &p->tok) &&
           parse_norm(po, ln, p->H, &p->emb_ln);
}

/* make_plan((H, F, heads, att_tables, embeddings, layers, (pool_quant, pooler))) -> plan. Every level is
 * a tuple (its items live as long as it does, whatever Python code a conversion runs). */
PyObject *py_make_plan(PyObject *self, PyObject *args) {
    Py_ssize_t H, F, heads;
    int att_tables;
    PyObject *spec, *emb, *layers, *pool, *pool_q, *pooler;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &spec) ||
        !PyArg_ParseTuple(spec, "nnnpO!O!O!", &H, &F, &heads, &att_tables, &PyTuple_Type, &emb,
                          &PyTuple_Type, &layers, &PyTuple_Type, &pool) ||
        !PyArg_ParseTuple(pool, "OO", &pool_q, &pooler))
        return NULL;
    if (H < 1 || F < 1 || heads < 1 || H % heads || H > (1 << 20) || F > (1 << 22))
        return PyErr_Format(PyExc_ValueError, "plan: hidden %zd, FFN %zd, %zd heads", H, F, heads);
    plan_obj *po = calloc(1, sizeof *po);
    if (!po) return PyErr_NoMemory();
    plan_t *p = &po->p;
    p->H = H, p->F = F, p->heads = heads, p->nl = PyTuple_GET_SIZE(layers);
    p->att_tables = att_tables;
    p->layers = calloc(p->nl + 1, sizeof(plan_layer));
    p->qkv_q = calloc(3 * p->nl + 3, sizeof(plan_quant));
    int ok = p->layers && p->qkv_q;
    if (!ok) PyErr_NoMemory();
    ok = ok && parse_embeddings(po, emb);
    for (size_t i = 0; ok && i < p->nl; i++)
        ok = parse_layer(po, PyTuple_GET_ITEM(layers, i), &p->layers[i], &p->qkv_q[3 * i]);
    ok = ok && parse_quant(po, pool_q, H, &p->pool_q) && parse_linear(po, pooler, H, H, &p->pooler);
    PyObject *cap = ok ? PyCapsule_New(po, CAPSULE, plan_capsule_free) : NULL;
    if (!cap) plan_free(po);
    return cap;
}

/* The token ids and types of [B, L] copied (the caller's arrays could change while the forward
 * runs without the GIL) and checked against the plan's tables; NULL with an exception set. */
static int64_t *checked_ids(const plan_obj *po, const Py_buffer *ids, const Py_buffer *tt,
                            size_t T) {
    int64_t *c = malloc(2 * T * sizeof(int64_t));
    if (!c) return PyErr_NoMemory(), NULL;
    memcpy(c, ids->buf, T * 8);
    memcpy(c + T, tt->buf, T * 8);
    for (size_t t = 0; t < T; t++)
        if (c[t] < 0 || (size_t)c[t] >= po->vocab || c[T + t] < 0 || (size_t)c[T + t] >= po->ntypes) {
            free(c);
            PyErr_Format(PyExc_ValueError, "forward: token %zu has id %lld, type %lld; the plan's "
                         "tables take ids below %zu, types below %zu", t, (long long)c[t],
                         (long long)c[T + t], po->vocab, po->ntypes);
            return NULL;
        }
    return c;
}

/* forward(plan, ids, token_types, keep, B, L, pooled): the pooler's output before its tanh. */
PyObject *py_forward(PyObject *self, PyObject *args) {
    PyObject *cap;
    Py_buffer ids, tt, keep, out;
    Py_ssize_t B, L;
    if (!PyArg_ParseTuple(args, "Oy*y*y*nnw*", &cap, &ids, &tt, &keep, &B, &L, &out)) return NULL;
    const plan_obj *po = PyCapsule_GetPointer(cap, CAPSULE);
    PyObject *ret = NULL;
    /* B bounded by the ids' buffer before any product is taken, and T by what the forward's
     * buffers can hold without overflow */
    int fits = po && B > 0 && L > 0 && (size_t)L <= po->npos &&
               (size_t)B <= (size_t)ids.len / 8 / (size_t)L;
    const size_t T = fits ? (size_t)B * L : 0;
    fits = fits && T <= (SIZE_MAX / 64) / (4 * po->p.H + po->p.F) && (size_t)tt.len >= T * 8 &&
           (size_t)keep.len >= T && (size_t)out.len / 4 / po->p.H >= (size_t)B;
    int64_t *id = NULL;
    if (!po) {
        /* PyCapsule_GetPointer set the exception */
    } else if (!fits) {
        PyErr_SetString(PyExc_ValueError, "forward: ids, token types, keep or out do not fit "
                        "the plan and [B, L]");
    } else if ((id = checked_ids(po, &ids, &tt, T))) {
        int rc;
        Py_BEGIN_ALLOW_THREADS rc = forward(&po->p, id, id + T, keep.buf, B, L, out.buf);
        Py_END_ALLOW_THREADS
        if (rc) PyErr_NoMemory();
        else ret = Py_None, Py_INCREF(ret);
    }
    free(id);
    Py_buffer *bufs[] = {&ids, &tt, &keep, &out};
    for (int i = 0; i < 4; i++) PyBuffer_Release(bufs[i]);
    return ret;
}
