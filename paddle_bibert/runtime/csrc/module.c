/*
 * The CPython extension paddle_bibert.runtime._kernels: the bitwise kernels of the packed BiBERT
 * runtime (no numpy headers: arrays arrive through the buffer protocol, shapes as integers,
 * outputs preallocated by Python, paddle_bibert/runtime/kernels.py). This file checks the
 * buffers and calls the operations (ops.h) without the GIL.
 *
 * The other files, each one job:
 *   common.h                 the bit layout, operation codes, inlined helpers
 *   isa.h, isa.c             the kernel sets (one per instruction set) and the choice of one
 *   simd.h                   x86 vector helpers the AVX2 and AVX-512 sets share
 *   products_*.c             the binary products' tiles, per set (AVX2: also by table lookup)
 *   attention_rows.c         the attention's per-query kernels, per set
 *   gemm.c                   the popcount GEMM and the binary linear over whole matrices
 *   attention.c              binary attention over all heads
 *   softmax_map.c            BiT's softmax map of a row of integer scores
 *   pack.c, layer_norm.c, embed.c   the row-wise operations, with their per-set row kernels
 *   pool.c                   the thread pool every operation runs on
 *   forward.c, plan.c        a model's whole forward in one call, and its plan from Python
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "isa.h"
#include "ops.h"
#include "plan.h"
#include "pool.h"
#include "softmax_map.h"

static int need(Py_buffer *b, size_t bytes, const char *what) {
    if ((size_t)b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, kernel needs %zu", what, b->len,
                     bytes);
        return 0;
    }
    return 1;
}

/* The optional nibble panels of an N-channel operand of kw words (products_avx2_tables.c): a
 * buffer of ceil(N / 32) * 32 * 16 kw bytes, or None (b->buf stays NULL). 0 with an exception
 * set. */
static int nibbles_arg(PyObject *obj, Py_buffer *b, size_t N, size_t kw) {
    b->buf = NULL;
    if (obj == Py_None) return 1;
    if (PyObject_GetBuffer(obj, b, PyBUF_SIMPLE) < 0) return 0;
    if (!need(b, (N + 31) / 32 * 32 * 16 * kw, "nibbles")) {
        PyBuffer_Release(b);
        b->buf = NULL;
        return 0;
    }
    return 1;
}

static void release_nibbles(Py_buffer *b) {
    if (b->buf) PyBuffer_Release(b);
}

static PyObject *py_pack_signs(PyObject *self, PyObject *args) {
    Py_buffer x, out;
    Py_ssize_t rows, n;
    if (!PyArg_ParseTuple(args, "y*nnw*", &x, &rows, &n, &out)) return NULL;
    PyObject *ret = NULL;
    if (need(&x, (size_t)rows * n * 4, "x") && need(&out, (size_t)rows * nwords(n) * 8, "out")) {
        Py_BEGIN_ALLOW_THREADS pack_rows(x.buf, rows, n, out.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return ret;
}

/* popcount_gemm(a, M, kw, b_il, N, op, out_i32) or bin_linear(a, M, kw, b_il, N, K, alpha, bias, out) */
static PyObject *py_popcount_gemm(PyObject *self, PyObject *args) {
    Py_buffer a, b, out, nib;
    Py_ssize_t M, kw, N;
    int op;
    PyObject *nib_obj = Py_None;
    if (!PyArg_ParseTuple(args, "y*nny*niw*|O", &a, &M, &kw, &b, &N, &op, &out, &nib_obj))
        return NULL;
    PyObject *ret = NULL;
    size_t nb = ((size_t)N + 7) / 8;
    if (need(&a, (size_t)M * kw * 8, "a") && need(&b, nb * kw * 64, "b") &&
        need(&out, (size_t)M * N * 4, "out") && nibbles_arg(nib_obj, &nib, N, kw)) {
        Py_BEGIN_ALLOW_THREADS popc_gemm(a.buf, M, kw, b.buf, N, op ? OP_AND : OP_XOR, out.buf,
                                         NULL, NULL, NULL, NULL, 0, 0, NULL, nib.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
        release_nibbles(&nib);
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_bin_linear(PyObject *self, PyObject *args) {
    Py_buffer a, b, al, bi, out, sh = {0}, nib;
    Py_ssize_t M, kw, N, K;
    int signs, unsig = 0, kind = -1, act = ACT_NONE;
    PyObject *sh_obj = Py_None, *nib_obj = Py_None;
    float scale = 1.0f;
    if (!PyArg_ParseTuple(args, "y*nny*nny*y*w*p|pOfiiO", &a, &M, &kw, &b, &N, &K, &al, &bi, &out,
                          &signs, &unsig, &sh_obj, &scale, &kind, &act, &nib_obj))
        return NULL;
    const int has_sh = sh_obj != Py_None;
    if (has_sh && PyObject_GetBuffer(sh_obj, &sh, PyBUF_SIMPLE) < 0) {
        Py_buffer *bufs[] = {&a, &b, &al, &bi, &out};
        for (int i = 0; i < 5; i++) PyBuffer_Release(bufs[i]);
        return NULL;
    }
    PyObject *ret = NULL;
    size_t nb = ((size_t)N + 7) / 8;
    const outq_t q = {has_sh ? sh.buf : NULL, scale, kind, act, NULL, NULL};
    if (kind != -1 && (!signs || (kind != Q_SIGN && kind != Q_UNSIGNED) || act < ACT_NONE ||
                              act > ACT_GELU)) {
        PyErr_Format(PyExc_ValueError, "bin_linear: quantizer kind %d, activation %d%s", kind, act,
                     signs ? "" : " without signs");
    } else if (need(&a, (size_t)M * kw * 8, "a") && need(&b, nb * kw * 64, "w") &&
               need(&al, (size_t)N * 4, "alpha") && need(&bi, (size_t)N * 4, "bias") &&
               (!has_sh || need(&sh, (size_t)N * 4, "shift")) &&
               need(&out, signs ? (size_t)M * nwords(N) * 8 : (size_t)M * N * 4, "out") &&
               nibbles_arg(nib_obj, &nib, N, kw)) {
        Py_BEGIN_ALLOW_THREADS popc_gemm(a.buf, M, kw, b.buf, N, unsig ? OP_AND : OP_XOR, NULL,
                                         signs ? NULL : out.buf, signs ? out.buf : NULL, al.buf,
                                         bi.buf, (long)K, unsig, kind == -1 ? NULL : &q, nib.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
        release_nibbles(&nib);
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&al);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&out);
    if (has_sh) PyBuffer_Release(&sh);
    return ret;
}

static PyObject *py_bin_linear_cut(PyObject *self, PyObject *args) {
    Py_buffer a, b, al, bi, lo, hi, out, nib;
    Py_ssize_t M, kw, N, K;
    PyObject *nib_obj = Py_None;
    if (!PyArg_ParseTuple(args, "y*nny*nny*y*y*y*w*|O", &a, &M, &kw, &b, &N, &K, &al, &bi, &lo, &hi,
                          &out, &nib_obj))
        return NULL;
    PyObject *ret = NULL;
    const outq_t q = {NULL, 1.0f, Q_SIGN, ACT_NONE, lo.buf, hi.buf};
    if (need(&a, (size_t)M * kw * 8, "a") && need(&b, ((size_t)N + 7) / 8 * kw * 64, "w") &&
        need(&al, (size_t)N * 4, "alpha") && need(&bi, (size_t)N * 4, "bias") &&
        need(&lo, (size_t)N * 4, "lo") && need(&hi, (size_t)N * 4, "hi") &&
        need(&out, (size_t)M * nwords(N) * 8, "out") && nibbles_arg(nib_obj, &nib, N, kw)) {
        Py_BEGIN_ALLOW_THREADS popc_gemm(a.buf, M, kw, b.buf, N, OP_XOR, NULL, NULL, out.buf, al.buf,
                                         bi.buf, (long)K, 0, &q, nib.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
        release_nibbles(&nib);
    }
    Py_buffer *bufs[] = {&a, &b, &al, &bi, &lo, &hi, &out};
    for (int i = 0; i < 7; i++) PyBuffer_Release(bufs[i]);
    return ret;
}

static PyObject *py_attention(PyObject *self, PyObject *args) {
    Py_buffer qkv, keep, out, tab = {0};
    Py_ssize_t B, L, H, heads;
    int mode;
    double sscale = 1.0, mscale = 1.0, cscale = 1.0;
    PyObject *tab_obj = Py_None;
    int tables = 1;
    if (!PyArg_ParseTuple(args, "y*y*nnnniw*|dddOp", &qkv, &keep, &B, &L, &H, &heads, &mode, &out,
                          &sscale, &mscale, &cscale, &tab_obj, &tables))
        return NULL;
    PyObject *ret = NULL;
    const int has_tab = tab_obj != Py_None;
    if (heads <= 0 || H % heads) {
        PyErr_SetString(PyExc_ValueError, "hidden size is not a multiple of the head count");
    } else if (mode < MODE_BOOL || mode > MODE_SOFTMAX) {
        PyErr_Format(PyExc_ValueError, "unknown attention mode %d", mode);
    } else if (has_tab && PyObject_GetBuffer(tab_obj, &tab, PyBUF_SIMPLE) < 0) {
        tab = (Py_buffer){0}; /* the exception is set */
    } else if (need(&qkv, (size_t)B * L * nwords(3 * H) * 8, "qkv") &&
               need(&keep, (size_t)B * L, "keep") &&
               need(&out, (size_t)B * L * H * 4, "out") &&
               (!has_tab || need(&tab, softmax_table_len((long)(H / heads)) * 8, "table"))) {
        int rc;
        Py_BEGIN_ALLOW_THREADS rc = attention(qkv.buf, keep.buf, B, L, H, heads, mode, sscale,
                                              (float)mscale, cscale, has_tab ? tab.buf : NULL,
                                              tables, out.buf);
        Py_END_ALLOW_THREADS if (rc) PyErr_NoMemory();
        else {
            ret = Py_None;
            Py_INCREF(ret);
        }
    }
    PyBuffer_Release(&tab); /* obj NULL if not acquired: left as it is */
    PyBuffer_Release(&qkv);
    PyBuffer_Release(&keep);
    PyBuffer_Release(&out);
    return ret;
}

/* softmax_table(dh, score_scale, out): BiT's table of exponentials and its rows' flags
 * (softmax_map.c), float64 [dh + 2, dh + 1], for the attention calls of that head size and scale */
static PyObject *py_softmax_table(PyObject *self, PyObject *args) {
    Py_buffer out;
    Py_ssize_t dh;
    double sscale;
    if (!PyArg_ParseTuple(args, "ndw*", &dh, &sscale, &out)) return NULL;
    PyObject *ret = NULL;
    if (dh < 1 || dh > 65536) { /* (dh + 2)(dh + 1) doubles: no overflow below that */
        PyErr_Format(PyExc_ValueError, "softmax_table: head size %zd", dh);
    } else if (need(&out, softmax_table_len((long)dh) * 8, "out")) {
        softmax_table((long)dh, sscale, out.buf);
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_pack_act(PyObject *self, PyObject *args) {
    Py_buffer x, out, sh = {0};
    PyObject *sh_obj;
    Py_ssize_t rows, n;
    float scale;
    int kind, act;
    if (!PyArg_ParseTuple(args, "y*nnOfiiw*", &x, &rows, &n, &sh_obj, &scale, &kind, &act, &out))
        return NULL;
    const int has_sh = sh_obj != Py_None;
    if (has_sh && PyObject_GetBuffer(sh_obj, &sh, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&out);
        return NULL;
    }
    PyObject *ret = NULL;
    if ((kind != Q_SIGN && kind != Q_UNSIGNED) || act < ACT_NONE || act > ACT_GELU) {
        PyErr_Format(PyExc_ValueError, "pack_act: unknown kind %d or activation %d", kind, act);
    } else if (need(&x, (size_t)rows * n * 4, "x") && (!has_sh || need(&sh, (size_t)n * 4, "shift")) &&
               need(&out, (size_t)rows * nwords(n) * 8, "out")) {
        Py_BEGIN_ALLOW_THREADS pack_act(x.buf, rows, n, has_sh ? sh.buf : NULL, scale, kind, act,
                                        out.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&x);
    if (has_sh) PyBuffer_Release(&sh);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_embed(PyObject *self, PyObject *args) {
    Py_buffer ids, tt, wb, wa, pos, tok, out;
    Py_ssize_t T, L, H;
    if (!PyArg_ParseTuple(args, "y*y*nny*y*ny*y*w*", &ids, &tt, &T, &L, &wb, &wa, &H, &pos, &tok,
                          &out))
        return NULL;
    PyObject *ret = NULL;
    /* Index ranges are checked by the Python caller (it knows the table sizes). */
    if (need(&ids, (size_t)T * 8, "ids") && need(&tt, (size_t)T * 8, "token_type_ids") &&
        need(&out, (size_t)T * H * 4, "out")) {
        Py_BEGIN_ALLOW_THREADS embed(ids.buf, tt.buf, T, L, wb.buf, wa.buf, H, pos.buf, tok.buf,
                                     out.buf);
        Py_END_ALLOW_THREADS ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&ids);
    PyBuffer_Release(&tt);
    PyBuffer_Release(&wb);
    PyBuffer_Release(&wa);
    PyBuffer_Release(&pos);
    PyBuffer_Release(&tok);
    PyBuffer_Release(&out);
    return ret;
}

/* The binarizations of layer_norm's output: a sequence of (shift or None, scale, kind, out)
 * for T rows of H values, its buffers acquired into bufs[2 q] (shift; obj NULL if None) and
 * bufs[2 q + 1] (out); PyBuffer_Release leaves a buffer whose obj is NULL as it is. -1 with an
 * exception set (what was acquired released). */
enum { LN_MAX_BITS = 4 };
static void ln_bits_release(Py_buffer *bufs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) PyBuffer_Release(&bufs[2 * i]), PyBuffer_Release(&bufs[2 * i + 1]);
}

static int ln_bits_arg(PyObject *seq, size_t T, size_t H, ln_bits_t *bits, Py_buffer *bufs) {
    /* a tuple of its own: parsing an item can run Python code that changes a list */
    PyObject *items = PySequence_Tuple(seq);
    if (!items) return -1;
    const Py_ssize_t nb = PyTuple_GET_SIZE(items);
    Py_ssize_t q = 0, got = 0; /* got: the binarizations whose buffers are held */
    if (nb > LN_MAX_BITS)
        PyErr_Format(PyExc_ValueError, "layer_norm: %zd binarizations, at most %d", nb, LN_MAX_BITS);
    for (; nb <= LN_MAX_BITS && q < nb; q++) {
        PyObject *sh;
        bufs[2 * q] = (Py_buffer){0};
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(items, q), "Ofiw*", &sh, &bits[q].scale,
                              &bits[q].kind, &bufs[2 * q + 1]))
            break;
        got = q + 1;
        if (sh != Py_None && PyObject_GetBuffer(sh, &bufs[2 * q], PyBUF_SIMPLE) < 0) {
            bufs[2 * q] = (Py_buffer){0};
            break;
        }
        if ((sh != Py_None && !need(&bufs[2 * q], H * 4, "shift")) ||
            !need(&bufs[2 * q + 1], T * nwords(H) * 8, "bits"))
            break;
        if (bits[q].kind != Q_SIGN && bits[q].kind != Q_UNSIGNED) {
            PyErr_Format(PyExc_ValueError, "layer_norm: quantizer kind %d", bits[q].kind);
            break;
        }
        bits[q].shift = sh == Py_None ? NULL : bufs[2 * q].buf;
        bits[q].out = bufs[2 * q + 1].buf;
    }
    Py_DECREF(items);
    if (q == nb) return (int)nb;
    ln_bits_release(bufs, got);
    return -1;
}

static PyObject *py_layer_norm(PyObject *self, PyObject *args) {
    Py_buffer x, res = {0}, g, bt, out, bufs[2 * LN_MAX_BITS];
    PyObject *res_obj, *bits_obj = NULL;
    Py_ssize_t T, H;
    double eps;
    ln_bits_t bits[LN_MAX_BITS];
    if (!PyArg_ParseTuple(args, "y*Onny*y*dw*|O", &x, &res_obj, &T, &H, &g, &bt, &eps, &out,
                          &bits_obj))
        return NULL;
    PyObject *ret = NULL;
    const int has_res = res_obj != Py_None;
    const int got_res = !has_res || PyObject_GetBuffer(res_obj, &res, PyBUF_SIMPLE) == 0;
    const int nb = !got_res ? -1 : bits_obj ? ln_bits_arg(bits_obj, T, H, bits, bufs) : 0;
    size_t sz = (size_t)T * H * 4;
    if (nb >= 0 && need(&x, sz, "x") && (!has_res || need(&res, sz, "residual")) &&
        need(&g, (size_t)H * 4, "weight") && need(&bt, (size_t)H * 4, "bias") &&
        need(&out, sz, "out")) {
        Py_BEGIN_ALLOW_THREADS layer_norm(x.buf, has_res ? res.buf : NULL, T, H, g.buf, bt.buf,
                                          eps, out.buf, nb, bits);
        Py_END_ALLOW_THREADS
        ret = Py_None;
        Py_INCREF(ret);
    }
    if (nb > 0) ln_bits_release(bufs, nb);
    PyBuffer_Release(&x);
    if (has_res && got_res) PyBuffer_Release(&res);
    PyBuffer_Release(&g);
    PyBuffer_Release(&bt);
    PyBuffer_Release(&out);
    return ret;
}

static PyObject *py_available_isas(PyObject *self, PyObject *noargs) {
    PyObject *lst = PyList_New(0);
    for (int i = 0; lst && i < N_ISAS; i++)
        if (isa_supported(&ISAS[i])) {
            PyObject *s = PyUnicode_FromString(ISAS[i].name);
            if (!s || PyList_Append(lst, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(lst);
                return NULL;
            }
            Py_DECREF(s);
        }
    return lst;
}

static PyObject *py_get_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(g_isa->name);
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i < N_ISAS; i++)
        if (!strcmp(ISAS[i].name, name)) {
            if (!isa_supported(&ISAS[i]))
                return PyErr_Format(PyExc_RuntimeError, "this CPU does not support the %s kernels",
                                    name);
            g_isa = &ISAS[i];
            Py_RETURN_NONE;
        }
    return PyErr_Format(PyExc_ValueError, "unknown kernel set %s", name);
}

static PyObject *py_num_threads(PyObject *self, PyObject *noargs) {
    return PyLong_FromLong(pool_threads());
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1) return PyErr_Format(PyExc_ValueError, "num_threads must be >= 1, got %d", n);
    Py_BEGIN_ALLOW_THREADS pool_set_threads(n);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pack_signs", py_pack_signs, METH_VARARGS, "pack_signs(x, rows, n, out)"},
    {"popcount_gemm", py_popcount_gemm, METH_VARARGS, "popcount_gemm(a, M, kw, b_il, N, op, out, nibbles=None)"},
    {"bin_linear", py_bin_linear, METH_VARARGS,
     "bin_linear(a, M, kw, w_il, N, K, alpha, bias, out, signs, unsigned=False, shift=None, "
     "scale=1, kind=-1, act=0, nibbles=None): out = y, or its sign bits, or (kind >= 0) the bits of "
     "pack_act(y, shift, scale, kind, act); unsigned: a holds {0,1} inputs; nibbles: the weights' "
     "nibble panels, for the kernel sets that look counts up in tables"},
    {"bin_linear_cut", py_bin_linear_cut, METH_VARARGS,
     "bin_linear_cut(a, M, kw, w_il, N, K, alpha, bias, lo, hi, out, nibbles=None): the bits 1[lo <= count <= hi] "
     "per channel (int32 lo, hi), count = popcount(a XOR w): a sign layer's bits by sign_cut"},
    {"pack_act", py_pack_act, METH_VARARGS,
     "pack_act(x, rows, n, shift, scale, kind, act, out): bits of act(x) + shift"},
    {"attention", py_attention, METH_VARARGS,
     "attention(qkv_bits, keep, B, L, H, heads, mode, out, score_scale=1, map_scale=1, "
     "context_scale=1, table=None, tables=True)"},
    {"softmax_table", py_softmax_table, METH_VARARGS, "softmax_table(dh, score_scale, out)"},
    {"make_plan", py_make_plan, METH_VARARGS,
     "make_plan(spec): a packed model's one-call forward plan (see paddle_bibert/runtime/plan.py)"},
    {"forward", py_forward, METH_VARARGS,
     "forward(plan, ids, token_types, keep, B, L, pooled): the pooler's output before its tanh"},
    {"embed", py_embed, METH_VARARGS, "embed(ids, tt, T, L, wbits, walpha, H, pos, tok, out)"},
    {"layer_norm", py_layer_norm, METH_VARARGS, "layer_norm(x, res, T, H, g, b, eps, out[, bits]): bits a sequence of (shift, scale, kind, out)"},
    {"available_isas", py_available_isas, METH_NOARGS, "kernel sets this CPU supports"},
    {"get_isa", py_get_isa, METH_NOARGS, "the kernel set in use"},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa(name)"},
    {"num_threads", py_num_threads, METH_NOARGS, "threads a kernel call uses (BIBERT_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs)"},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set_num_threads(n)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Bitwise BiBERT kernels (see csrc/module.c).", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    for (int i = 0; i < N_ISAS; i++)
        if (isa_supported(&ISAS[i])) {
            g_isa = &ISAS[i]; /* ISAS is ordered fastest first */
            break;
        }
    pool_init();
    nib_tables_init();
    PyObject *m = PyModule_Create(&moddef);
    if (m) {
        PyModule_AddIntConstant(m, "OP_XOR", OP_XOR);
        PyModule_AddIntConstant(m, "OP_AND", OP_AND);
        PyModule_AddIntConstant(m, "MODE_BOOL", MODE_BOOL);
        PyModule_AddIntConstant(m, "MODE_KEEP", MODE_KEEP);
        PyModule_AddIntConstant(m, "MODE_SOFTMAX", MODE_SOFTMAX);
        PyModule_AddIntConstant(m, "Q_SIGN", Q_SIGN);
        PyModule_AddIntConstant(m, "Q_UNSIGNED", Q_UNSIGNED);
        PyModule_AddIntConstant(m, "ACT_NONE", ACT_NONE);
        PyModule_AddIntConstant(m, "ACT_RELU", ACT_RELU);
        PyModule_AddIntConstant(m, "ACT_GELU", ACT_GELU);
    }
    return m;
}
