/* Declarations shared by the files of token_columns (see token_columns.c). */
#ifndef TOKEN_COLUMNS_H
#define TOKEN_COLUMNS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Interned at import: vLLM's per-token keys, and the empty tuple object.__new__ is given. */
extern PyObject *KEY_TOKEN, *KEY_LOGPROB, *KEY_BYTES, *KEY_TOP, *EMPTY_TUPLE;

/* pack.c: the worker's side */
PyObject *pack_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* unpack.c: the trainer's side */
PyObject *token_strings(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *split_bytes(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *build_models(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
