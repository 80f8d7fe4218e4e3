/* token_columns: the per-token loops of the wire codec (common/packed.py,
 * trainer/trajectories.py) in C, where Python spends ~1 us a token on them. This file holds
 * the module; pack.c the worker's side, unpack.c the trainer's.
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
#include "token_columns.h"

PyObject *KEY_TOKEN, *KEY_LOGPROB, *KEY_BYTES, *KEY_TOP, *EMPTY_TUPLE;

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
    NULL, NULL, NULL, NULL,
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

