/*
 * logitsdump.compare._kernel: the C kernels of `compare` as Python functions.
 *
 *   pair_sums(g, m, itemsize, g_shift, m_shift, lanes) -> (gg, mm, gm, abs_g, abs_m, z_g, z_m, weighted,
 *                                                         abs_diff_max)
 *   top_k(x, itemsize, k, lanes) -> ((index, ...), all_finite)   the k largest, largest first, ties to
 *                                                                the lower index; whether no value is NaN or inf
 *   usable_lanes() -> [8, 4] (AVX-512 and AVX2 kernels), [4] (AVX2) or [] (neither: use the numpy path)
 *
 * `lanes` picks the kernels of that width (8: AVX-512, 4: AVX2 + FMA); each width rounds its sums
 * in its own order, so one width gives the same bits on every run.
 *
 * Buffers are C-contiguous float32 (itemsize 4) or float64 (8) values. The GIL is released while
 * a kernel runs, so threads measure pairs in parallel. See pair_loop.h and top_k.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kernel.h"

/* The kernels of each width, [0] for float32 and [1] for float64 values. */
typedef struct {
    int lanes, usable;
    PairLoop pair_sums[2];
    TopK top_k[2];
} Kernels;

static Kernels kernels[] = {
    {8, 0, {pair_sums_f32_lanes8, pair_sums_f64_lanes8}, {top_k_f32_lanes8, top_k_f64_lanes8}},
    {4, 0, {pair_sums_f32_lanes4, pair_sums_f64_lanes4}, {top_k_f32_lanes4, top_k_f64_lanes4}},
};
#define KERNEL_SETS ((int)(sizeof kernels / sizeof kernels[0]))

static void find_usable_kernels(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    kernels[0].usable = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
    kernels[1].usable = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("bmi2");
#endif
}

/* The usable kernels of `lanes` float64 lanes, or NULL with a Python error set. */
static const Kernels *kernels_for(int lanes)
{
    for (int i = 0; i < KERNEL_SETS; i++)
        if (kernels[i].lanes == lanes && kernels[i].usable)
            return &kernels[i];
    PyErr_Format(PyExc_ValueError, "no usable %d-lane kernels on this CPU (see usable_lanes())", lanes);
    return NULL;
}

/* 0 when the kernels can run on `len` bytes of `itemsize`-byte values, else -1 with a Python error set. */
static int check_input(Py_ssize_t len, int itemsize)
{
    if ((itemsize != 4 && itemsize != 8) || len == 0 || len % itemsize != 0) {
        PyErr_SetString(PyExc_ValueError, "a non-empty buffer of float32 (itemsize 4) or float64 (8) is needed");
        return -1;
    }
    return 0;
}

static PyObject *py_pair_sums(PyObject *self, PyObject *args)
{
    Py_buffer g, m;
    int itemsize, lanes;
    double g_shift, m_shift;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*iddi", &g, &m, &itemsize, &g_shift, &m_shift, &lanes))
        return NULL;
    PyObject *result = NULL;
    const Kernels *use = kernels_for(lanes);
    if (use != NULL && g.len != m.len)
        PyErr_SetString(PyExc_ValueError, "pair_sums needs two buffers of one size");
    else if (use != NULL && check_input(g.len, itemsize) == 0) {
        PairSums s;
        PairLoop loop = use->pair_sums[itemsize == 8];
        Py_BEGIN_ALLOW_THREADS
        loop(g.buf, m.buf, g.len / itemsize, g_shift, m_shift, &s);
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("(ddddddddd)", s.gg, s.mm, s.gm, s.abs_g, s.abs_m, s.z_g, s.z_m, s.weighted,
                               s.abs_diff_max);
    }
    PyBuffer_Release(&g);
    PyBuffer_Release(&m);
    return result;
}

static PyObject *py_top_k(PyObject *self, PyObject *args)
{
    Py_buffer x;
    int itemsize, lanes;
    Py_ssize_t k;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ini", &x, &itemsize, &k, &lanes))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *top = NULL;
    double *scratch = NULL;
    const Kernels *use = kernels_for(lanes);
    if (use == NULL || check_input(x.len, itemsize) != 0)
        goto done;
    if (k < 1 || k > x.len / itemsize) {
        PyErr_SetString(PyExc_ValueError, "top_k needs 1 <= k <= the number of values");
        goto done;
    }
    top = PyMem_Malloc(k * sizeof *top);
    scratch = PyMem_Malloc(TOP_K_SCRATCH(x.len / itemsize, k) * sizeof *scratch);
    if (top == NULL || scratch == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t found;
    int finite;
    TopK scan = use->top_k[itemsize == 8];
    Py_BEGIN_ALLOW_THREADS
    found = scan(x.buf, x.len / itemsize, k, top, scratch, &finite);
    Py_END_ALLOW_THREADS
    PyObject *indices = PyTuple_New(found);
    for (Py_ssize_t i = 0; indices != NULL && i < found; i++) {
        PyObject *index = PyLong_FromSsize_t(top[i]);
        if (index == NULL)
            Py_CLEAR(indices);
        else
            PyTuple_SET_ITEM(indices, i, index);
    }
    if (indices != NULL)
        result = Py_BuildValue("(NO)", indices, finite ? Py_True : Py_False);
done:
    PyMem_Free(top);
    PyMem_Free(scratch);
    PyBuffer_Release(&x);
    return result;
}

static PyObject *py_usable_lanes(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *result = PyList_New(0);
    for (int i = 0; result != NULL && i < KERNEL_SETS; i++) {
        if (!kernels[i].usable)
            continue;
        PyObject *lanes = PyLong_FromLong(kernels[i].lanes);
        if (lanes == NULL || PyList_Append(result, lanes) != 0)
            Py_CLEAR(result);
        Py_XDECREF(lanes);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"pair_sums", py_pair_sums, METH_VARARGS,
     "pair_sums(g, m, itemsize, g_shift, m_shift, lanes) -> (gg, mm, gm, abs_g, abs_m, z_g, z_m, weighted, "
     "abs_diff_max)"},
    {"top_k", py_top_k, METH_VARARGS,
     "top_k(x, itemsize, k, lanes) -> (indices of the k largest, largest first, ties to the lower index; whether "
     "every value is finite). NaN and -inf are never chosen, so fewer than k may come back."},
    {"usable_lanes", py_usable_lanes, METH_NOARGS,
     "usable_lanes() -> the widths (float64 lanes) of the kernels this CPU can run, widest first: [8, 4], [4] or []"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_kernel", .m_doc = "The C kernels of logitsdump compare.", .m_size = -1,
    .m_methods = methods,
};

/* Raised whenever a function's arguments or results change, so that metrics.py ignores a stale build. */
#define KERNEL_API_VERSION 1

PyMODINIT_FUNC PyInit__kernel(void)
{
    find_usable_kernels();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API_VERSION", KERNEL_API_VERSION) != 0)
        Py_CLEAR(m);
    return m;
}
