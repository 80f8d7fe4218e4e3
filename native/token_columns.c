/* token_columns: the per-token loops of the wire codec (common/packed.py,
 * trainer/trajectories.py) in C, where Python spends ~1 us a token on them.
 *
 * pack_entries(content, token_ids) -> (ids, logprobs, width, lengths, blob, same) | None
 *     vLLM's per-token entries, when every one has exactly the common shape, as columns:
 *     `token_id:N` ids (int32), logprobs (float32 when every value survives float32 bit for
 *     bit, else float64), the lengths of the `bytes` lists (uint8 when all are < 256, else
 *     uint32) and their values in one blob; all little-endian; `same`: `token_ids` (vLLM's
 *     field, any object) is a list of exactly these ints. None for anything else
 *     (top_logprobs, null bytes, bools, subclasses, other spellings...): the Python packer,
 *     which handles every shape, decides those.
 *
 * build_models(cls, names, columns, fields_set, slots) -> list
 *     What `cls.model_construct(**dict(zip(names, row)))` gives for each row of `columns`, at
 *     a tenth of its cost: object.__new__(cls), its __dict__ filled and its other pydantic
 *     slots set directly (`slots`: the descriptors of __pydantic_fields_set__,
 *     __pydantic_extra__, __pydantic_private__). A column of None gives each object a new
 *     empty list. The values must be valid already: nothing is checked but the columns' shape.
 *
 * token_strings(ids, count) -> list[str]
 *     `token_id:N` for each of `count` packed ids: little-endian uint24 (3 bytes each) or
 *     int32 (4), as `common.packed` sends them; ValueError for any other size.
 *
 * split_bytes(blob, lengths, width) -> list[list[int]]
 *     The blob cut into lists of byte values, one per little-endian length (uint8 when width
 *     is 1, uint32 when 4); ValueError unless the lengths add up to the blob exactly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static PyObject *KEY_TOKEN, *KEY_LOGPROB, *KEY_BYTES, *KEY_TOP, *EMPTY_TUPLE;

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

static PyObject *pack_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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

static PyObject *build_models(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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

static PyObject *split_bytes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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

static PyObject *token_strings(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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

static PyMethodDef methods[] = {
    {"pack_entries", (PyCFunction)(void (*)(void))pack_entries, METH_FASTCALL,
     "vLLM's per-token entries as packed columns, or None."},
    {"build_models", (PyCFunction)(void (*)(void))build_models, METH_FASTCALL,
     "Pydantic models built from columns of valid values, without validation."},
    {"token_strings", (PyCFunction)(void (*)(void))token_strings, METH_FASTCALL,
     "`token_id:N` for each packed id (uint24 or int32, little-endian)."},
    {"split_bytes", (PyCFunction)(void (*)(void))split_bytes, METH_FASTCALL,
     "A blob split into lists of byte values by little-endian lengths of width 1 or 4."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "token_columns", "The wire codec's per-token loops.", -1, methods,
};

PyMODINIT_FUNC PyInit_token_columns(void) {
    KEY_TOKEN = PyUnicode_InternFromString("token");
    KEY_LOGPROB = PyUnicode_InternFromString("logprob");
    KEY_BYTES = PyUnicode_InternFromString("bytes");
    KEY_TOP = PyUnicode_InternFromString("top_logprobs");
    EMPTY_TUPLE = PyTuple_New(0);
    if (!KEY_TOKEN || !KEY_LOGPROB || !KEY_BYTES || !KEY_TOP || !EMPTY_TUPLE) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
