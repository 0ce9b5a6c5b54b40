/* The Python functions of the one-call forward (plan.c): make_plan and forward. */
#ifndef BIBERT_PLAN_H
#define BIBERT_PLAN_H

#include <Python.h>

PyObject *py_make_plan(PyObject *self, PyObject *args);
PyObject *py_forward(PyObject *self, PyObject *args);

#endif
