/* token_strings, split_bytes, build_models: packed columns -> Python objects (see
 * token_columns.c). */
#include <stdint.h>
#include <string.h>

#include "token_columns.h"

static int set_slot(PyObject *slot, PyObject *object, PyObject *value) {
    descrsetfunc set = Py_TYPE(slot)->tp_descr_set;
    if (set == NULL) {
        PyErr_SetString(PyExc_TypeError, "build_models: a slot that cannot be set");
        return -1;
    }
    return set(slot, object, value);
}

static PyObject *build_one(PyTypeObject *cls, PyObject *names, PyObject *columns,
                           Py_ssize_t row, PyObject *fields_set, PyObject *slots) {
    PyObject *object = PyBaseObject_Type.tp_new(cls, EMPTY_TUPLE, NULL);
    /* The instance's own __dict__, as an attribute set on it would make: sharing its class's
     * table of keys (a split dict) instead of allocating one per object. */
    PyObject *values = object == NULL ? NULL : PyObject_GenericGetDict(object, NULL);
    PyObject *extra = PyDict_New();
    if (object == NULL || values == NULL || extra == NULL) {
        goto failed;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); k++) {
        PyObject *column = PyTuple_GET_ITEM(columns, k);
        int set;
        if (column == Py_None) {
            PyObject *fresh = PyList_New(0);
            set = fresh == NULL ? -1 : PyDict_SetItem(values, PyTuple_GET_ITEM(names, k), fresh);
            Py_XDECREF(fresh);
        } else if (row < PyList_GET_SIZE(column)) { /* a finalizer (GC) may have cut it */
            set = PyDict_SetItem(values, PyTuple_GET_ITEM(names, k),
                                 PyList_GET_ITEM(column, row));
        } else {
            PyErr_SetString(PyExc_RuntimeError, "build_models: a column changed while read");
            set = -1;
        }
        if (set < 0) {
            goto failed;
        }
    }
    if (set_slot(PyTuple_GET_ITEM(slots, 0), object, fields_set) < 0
        || set_slot(PyTuple_GET_ITEM(slots, 1), object, extra) < 0
        || set_slot(PyTuple_GET_ITEM(slots, 2), object, Py_None) < 0) {
        goto failed;
    }
    Py_DECREF(values);
    Py_DECREF(extra);
    return object;
failed:
    Py_XDECREF(object);
    Py_XDECREF(values);
    Py_XDECREF(extra);
    return NULL;
}

PyObject *build_models(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "build_models(cls, names, columns, fields_set, slots) takes 5 arguments");
        return NULL;
    }
    PyObject *cls = args[0], *names = args[1], *columns = args[2];
    PyObject *fields_set = args[3], *slots = args[4];
    if (!PyType_Check(cls) || !PyTuple_CheckExact(names) || !PyTuple_CheckExact(columns)
        || PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(columns) || !PyTuple_CheckExact(slots)
        || PyTuple_GET_SIZE(slots) != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "build_models: a class, a tuple of names, a tuple of as many columns, "
                        "the fields set and 3 pydantic slots");
        return NULL;
    }
    Py_ssize_t rows = -1;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(columns); k++) {
        PyObject *column = PyTuple_GET_ITEM(columns, k);
        if (column == Py_None) {
            continue;
        }
        if (!PyList_CheckExact(column) || (rows >= 0 && PyList_GET_SIZE(column) != rows)) {
            PyErr_SetString(PyExc_ValueError, "build_models: columns are lists of one length");
            return NULL;
        }
        rows = PyList_GET_SIZE(column);
    }
    if (rows < 0) {
        PyErr_SetString(PyExc_ValueError, "build_models: at least one column is a list");
        return NULL;
    }
    PyObject *out = PyList_New(rows);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t row = 0; row < rows; row++) {
        PyObject *object =
            build_one((PyTypeObject *)cls, names, columns, row, fields_set, slots);
        if (object == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, row, object);
    }
    return out;
}

PyObject *split_bytes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer blob, lengths;
    int width;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "split_bytes(blob, lengths, width) takes 3 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &blob, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &lengths, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&blob);
        return NULL;
    }
    PyObject *out = NULL;
    width = PyLong_AsLong(args[2]);
    if ((width != 1 && width != 4) || lengths.len % width != 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "split_bytes: lengths of width 1 or 4");
        }
        goto done;
    }
    Py_ssize_t rows = lengths.len / width, at = 0;
    const unsigned char *sizes = lengths.buf, *values = blob.buf;
    out = PyList_New(rows);
    for (Py_ssize_t row = 0; out != NULL && row < rows; row++) {
        const unsigned char *s = sizes + width * row;
        Py_ssize_t size = width == 1 ? s[0] : (s[0] | s[1] << 8 | s[2] << 16 | (uint32_t)s[3] << 24);
        PyObject *list = size <= blob.len - at ? PyList_New(size) : NULL;
        if (list == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "split_bytes: lengths beyond the blob");
            }
            Py_CLEAR(out);
            break;
        }
        for (Py_ssize_t k = 0; k < size; k++) {
            PyList_SET_ITEM(list, k, PyLong_FromLong(values[at++])); /* small ints: cached */
        }
        PyList_SET_ITEM(out, row, list);
    }
    if (out != NULL && at != blob.len) {
        PyErr_SetString(PyExc_ValueError, "split_bytes: lengths short of the blob");
        Py_CLEAR(out);
    }
done:
    PyBuffer_Release(&blob);
    PyBuffer_Release(&lengths);
    return out;
}

/* "token_id:N" for one id: a new string (about what a dict lookup of a shared one costs, when
 * the ids of a long rollout miss the CPU's caches). */
static PyObject *spelling(int64_t id) {
    char digits[24];
    int count = 0, negative = id < 0;
    uint64_t rest = negative ? (uint64_t)(-id) : (uint64_t)id;
    do { /* backwards, then copied in order below */
        digits[count++] = (char)('0' + rest % 10);
        rest /= 10;
    } while (rest);
    PyObject *text = PyUnicode_New(9 + negative + count, 127);
    if (text != NULL) {
        char *at = (char *)PyUnicode_1BYTE_DATA(text);
        memcpy(at, "token_id:", 9);
        at += 9;
        if (negative) {
            *at++ = '-';
        }
        while (count) {
            *at++ = digits[--count];
        }
    }
    return text;
}

PyObject *token_strings(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "token_strings(ids: bytes, count: int)");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]), size = PyBytes_GET_SIZE(args[0]);
    if (count < 0 || (size != 3 * count && size != 4 * count)) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "token_strings: %zd bytes of ids for %zd tokens",
                         size, count);
        }
        return NULL;
    }
    int width = size == 3 * count ? 3 : 4;
    const unsigned char *at = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    PyObject *out = PyList_New(count);
    for (Py_ssize_t i = 0; out != NULL && i < count; i++, at += width) {
        uint32_t bits = at[0] | at[1] << 8 | (uint32_t)at[2] << 16;
        int64_t id = width == 3 ? (int64_t)bits : (int64_t)(int32_t)(bits | (uint32_t)at[3] << 24);
        PyObject *text = spelling(id);
        if (text == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, text);
    }
    return out;
}

