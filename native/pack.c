/* pack_entries: vLLM's per-token entries -> packed columns (see token_columns.c). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "token_columns.h"

static void put_u32(unsigned char *at, uint32_t value) {
    at[0] = value & 0xff;
    at[1] = (value >> 8) & 0xff;
    at[2] = (value >> 16) & 0xff;
    at[3] = value >> 24;
}

/* The id N of a canonical `token_id:N` (no sign, no leading zero, below 2**31); -1 if not. */
static int64_t token_id(PyObject *token) {
    if (!PyUnicode_CheckExact(token) || !PyUnicode_IS_ASCII(token)) {
        return -1;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(token);
    const char *text = (const char *)PyUnicode_1BYTE_DATA(token);
    if (length < 10 || length > 19 || memcmp(text, "token_id:", 9) != 0) {
        return -1;
    }
    const char *digits = text + 9;
    Py_ssize_t count = length - 9;
    if (count > 1 && digits[0] == '0') {
        return -1;
    }
    int64_t value = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (digits[i] < '0' || digits[i] > '9') {
            return -1;
        }
        value = value * 10 + (digits[i] - '0');
    }
    return value <= INT32_MAX ? value : -1;
}

/* float32 holds `value` bit for bit (the sign of zero and NaN's payload included). */
static int exact_in_float32(double value) {
    if (isfinite(value) && fabs(value) > FLT_MAX) {
        return 0; /* the cast would be undefined */
    }
    double back = (double)(float)value;
    return memcmp(&back, &value, sizeof value) == 0;
}

typedef struct {
    unsigned char *ids, *narrow, *wide, *blob;
    uint32_t *lengths;
    Py_ssize_t blob_size, blob_capacity;
    uint32_t longest;
    int all_narrow;
    PyObject *hint;      /* vLLM's `token_ids` of the choice */
    int hint_is_the_ids; /* so far: it is a list of exactly these ints */
} Columns;

/* `key` is the string `name` (an exact str, as every key here is by then). */
static int is_key(PyObject *key, PyObject *name) {
    return key == name
           || (PyUnicode_GET_LENGTH(key) == PyUnicode_GET_LENGTH(name)
               && PyUnicode_KIND(key) == PyUnicode_KIND(name)
               && memcmp(PyUnicode_DATA(key), PyUnicode_DATA(name),
                         PyUnicode_GET_LENGTH(name) * PyUnicode_KIND(name)) == 0);
}

/* 1: the entry was added; 0: not the common shape; -1: a Python error. */
static int add_entry(Columns *c, Py_ssize_t i, PyObject *entry) {
    if (!PyDict_CheckExact(entry) || PyDict_GET_SIZE(entry) != 4) {
        return 0;
    }
    /* Keys that are exact strings: the lookups below then run no Python code (no __eq__ of
     * a subclass), so nothing can change the entry or the content while they are read. */
    PyObject *names[4] = {KEY_TOKEN, KEY_LOGPROB, KEY_BYTES, KEY_TOP};
    PyObject *values[4], *key;
    Py_ssize_t at = 0;
    int in_order = 1; /* vLLM's order: the values are read off as the keys are checked */
    for (int k = 0; PyDict_Next(entry, &at, &key, &values[k]); k++) {
        if (!PyUnicode_CheckExact(key)) {
            return 0;
        }
        in_order = in_order && is_key(key, names[k]);
    }
    for (int k = 0; !in_order && k < 4; k++) {
        values[k] = PyDict_GetItemWithError(entry, names[k]);
        if (values[k] == NULL) {
            return PyErr_Occurred() ? -1 : 0; /* a key missing: not the common shape */
        }
    }
    PyObject *token = values[0], *logprob = values[1], *bytes = values[2], *top = values[3];
    int64_t id = token_id(token);
    if (id < 0 || !PyFloat_CheckExact(logprob) || !PyList_CheckExact(bytes)
        || !PyList_CheckExact(top) || PyList_GET_SIZE(top) != 0) {
        return 0;
    }
    put_u32(c->ids + 4 * i, (uint32_t)id);
    if (c->hint_is_the_ids) {
        PyObject *hinted = PyList_GET_ITEM(c->hint, i);
        int overflow = 0;
        c->hint_is_the_ids = PyLong_CheckExact(hinted)
                             && PyLong_AsLongLongAndOverflow(hinted, &overflow) == id && !overflow;
    }
    double value = PyFloat_AS_DOUBLE(logprob);
    float narrow = (float)(isfinite(value) && fabs(value) > FLT_MAX ? 0.0 : value);
    uint32_t narrow_bits;
    uint64_t wide_bits;
    memcpy(&narrow_bits, &narrow, 4);
    memcpy(&wide_bits, &value, 8);
    put_u32(c->narrow + 4 * i, narrow_bits);
    put_u32(c->wide + 8 * i, (uint32_t)wide_bits);
    put_u32(c->wide + 8 * i + 4, (uint32_t)(wide_bits >> 32));
    c->all_narrow = c->all_narrow && exact_in_float32(value);
    Py_ssize_t count = PyList_GET_SIZE(bytes);
    if (c->blob_size + count > c->blob_capacity) {
        Py_ssize_t capacity = 2 * (c->blob_capacity + count);
        unsigned char *grown = PyMem_Realloc(c->blob, capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        c->blob = grown;
        c->blob_capacity = capacity;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *item = PyList_GET_ITEM(bytes, k);
        if (!PyLong_CheckExact(item)) {
            return 0;
        }
        long byte = PyLong_AsLong(item);
        if (byte < 0 || byte > 255) {
            PyErr_Clear(); /* an overflow: not a byte either */
            return 0;
        }
        c->blob[c->blob_size++] = (unsigned char)byte;
    }
    c->lengths[i] = (uint32_t)count;
    if ((uint32_t)count > c->longest) {
        c->longest = (uint32_t)count;
    }
    return 1;
}

static PyObject *columns_tuple(Columns *c, Py_ssize_t n) {
    PyObject *lengths;
    if (c->longest < 256) {
        lengths = PyBytes_FromStringAndSize(NULL, n);
        if (lengths != NULL) {
            unsigned char *at = (unsigned char *)PyBytes_AS_STRING(lengths);
            for (Py_ssize_t i = 0; i < n; i++) {
                at[i] = (unsigned char)c->lengths[i];
            }
        }
    } else {
        lengths = PyBytes_FromStringAndSize(NULL, 4 * n);
        if (lengths != NULL) {
            unsigned char *at = (unsigned char *)PyBytes_AS_STRING(lengths);
            for (Py_ssize_t i = 0; i < n; i++) {
                put_u32(at + 4 * i, c->lengths[i]);
            }
        }
    }
    if (lengths == NULL) {
        return NULL;
    }
    int width = c->all_narrow ? 4 : 8;
    return Py_BuildValue(
        "(y#y#iNy#O)", (const char *)c->ids, 4 * n,
        (const char *)(width == 4 ? c->narrow : c->wide), width * n, width, lengths,
        (const char *)c->blob, c->blob_size, c->hint_is_the_ids ? Py_True : Py_False);
}

PyObject *pack_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pack_entries(content, token_ids) takes 2 arguments");
        return NULL;
    }
    PyObject *content = args[0];
    if (!PyList_CheckExact(content)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyList_GET_SIZE(content);
    Columns c = {0};
    c.all_narrow = 1;
    c.hint = args[1];
    c.hint_is_the_ids = PyList_CheckExact(c.hint) && PyList_GET_SIZE(c.hint) == n;
    c.ids = PyMem_Malloc(4 * n + 1);
    c.narrow = PyMem_Malloc(4 * n + 1);
    c.wide = PyMem_Malloc(8 * n + 1);
    c.lengths = PyMem_Malloc(4 * n + 1);
    c.blob_capacity = 4 * n + 16;
    c.blob = PyMem_Malloc(c.blob_capacity);
    PyObject *result = NULL;
    if (!c.ids || !c.narrow || !c.wide || !c.lengths || !c.blob) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int added = add_entry(&c, i, PyList_GET_ITEM(content, i));
        if (added < 0) {
            goto done;
        }
        if (added == 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    result = columns_tuple(&c, n);
done:
    PyMem_Free(c.ids);
    PyMem_Free(c.narrow);
    PyMem_Free(c.wide);
    PyMem_Free(c.lengths);
    PyMem_Free(c.blob);
    return result;
}
