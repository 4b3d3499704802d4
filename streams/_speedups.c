/* ctloop SDK speedups: the hot path of CtloopClient.log_prediction in one C call.
 *
 * encode_prediction(header, event_id, event_time, prediction_id, deployment, model_name, model_version,
 *                   role, features, label, score, probabilities, latency_ms) -> bytes | None
 *
 * Checks the arguments and writes `header` followed by the Avro binary encoding of a PredictionLogged
 * record (schemas/prediction_logged.avsc, field order: event_id, event_time, prediction_id, deployment,
 * model_name, model_version, role, features, label, score, probabilities, latency_ms). It returns None,
 * without raising, for anything outside the plain case: a non-str or empty string where one is required,
 * a role that is not one of the schema's symbols, an empty or non-dict feature map, a feature that is not
 * an exact int or float (bool is refused) or is NaN/infinite or beyond float32's range (|x| > FLT_MAX: the
 * models compute in float32), a string that is not encodable as UTF-8 (a lone surrogate), a probability
 * outside [0, 1], neither label nor score, and so on. The caller (streams/sdk.py) then takes its Python path, which names the field
 * in its error or encodes the unusual-but-valid record. The pure-Python encoders stay the reference:
 * tests compare this module's bytes with theirs, and every refusal with theirs.
 *
 * Built by setup.py as an optional extension: without a C compiler ctloop installs and runs without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* The PredictionLogged Role enum, in schema order (the encoded value is the index). */
static const char *const ROLE_SYMBOLS[] = {"primary", "shadow", "canary"};
#define N_ROLES 3

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char stack[2048];
} Buffer;

static void buf_init(Buffer *b) {
    b->data = b->stack;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->stack);
}

static void buf_free(Buffer *b) {
    if (b->data != b->stack) {
        PyMem_Free(b->data);
    }
}

/* Room for `extra` more bytes; 0 on success, -1 (MemoryError set) on failure. */
static int buf_reserve(Buffer *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    char *data;
    if (b->data == b->stack) {
        data = PyMem_Malloc((size_t)cap);
        if (data != NULL) {
            memcpy(data, b->stack, (size_t)b->len);
        }
    } else {
        data = PyMem_Realloc(b->data, (size_t)cap);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Avro long: zigzag, then base-128 varint (at most 10 bytes). */
static int put_long(Buffer *b, long long n) {
    if (buf_reserve(b, 10) < 0) {
        return -1;
    }
    unsigned long long z = ((unsigned long long)n << 1) ^ (unsigned long long)(n >> 63);
    while (z >= 0x80) {
        b->data[b->len++] = (char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    b->data[b->len++] = (char)z;
    return 0;
}

static int put_raw(Buffer *b, const char *p, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, p, (size_t)n);
    b->len += n;
    return 0;
}

static int put_double(Buffer *b, double x) {
    if (buf_reserve(b, 8) < 0) {
        return -1;
    }
    if (PyFloat_Pack8(x, b->data + b->len, 1) < 0) { /* little-endian, as Avro says */
        return -1;
    }
    b->len += 8;
    return 0;
}

/* Result of the helpers below: OK, REFUSE (not the plain case: the caller returns None) or ERROR (a
 * Python exception is set: memory). */
enum { OK = 0, REFUSE = 1, ERROR = -1 };

/* An Avro string from an exact str (non-empty unless allow_empty). */
static int put_str(Buffer *b, PyObject *s, int allow_empty) {
    if (!PyUnicode_CheckExact(s)) {
        return REFUSE;
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (p == NULL) { /* lone surrogates: not encodable as UTF-8 */
        PyErr_Clear();
        return REFUSE;
    }
    if (n == 0 && !allow_empty) {
        return REFUSE;
    }
    if (put_long(b, n) < 0 || put_raw(b, p, n) < 0) {
        return ERROR;
    }
    return OK;
}

/* A number finite in float32 (|x| <= FLT_MAX, as streams/validation.py's FLOAT32_MAX) from a float (numpy.float64 included: a float subclass) or an exact int (bool and other int
 * subclasses are refused, as the Python checks refuse bool). A float subclass is taken at its stored value
 * without calling Python code (so a dict cannot change while it is walked); only a subclass whose __float__
 * returns a different number would be encoded differently by the Python path, which calls __float__. */
static int as_finite(PyObject *v, double *out) {
    double x;
    if (PyFloat_Check(v)) {
        x = PyFloat_AS_DOUBLE(v);
    } else if (PyLong_CheckExact(v)) {
        x = PyLong_AsDouble(v);
        if (x == -1.0 && PyErr_Occurred()) { /* too large for a double */
            PyErr_Clear();
            return REFUSE;
        }
    } else {
        return REFUSE;
    }
    if (!isfinite(x) || fabs(x) > (double)FLT_MAX) { /* NaN, infinite, or infinite once a model casts it */
        return REFUSE;
    }
    *out = x;
    return OK;
}

/* An Avro map of doubles: one block (count, entries) and the 0 terminator, or a lone 0 when empty. */
static int put_number_map(Buffer *b, PyObject *map, int require_items, int unit_interval) {
    if (!PyDict_CheckExact(map)) {
        return REFUSE;
    }
    Py_ssize_t count = PyDict_GET_SIZE(map);
    if (count == 0) {
        if (require_items) {
            return REFUSE;
        }
        return put_long(b, 0) < 0 ? ERROR : OK;
    }
    if (put_long(b, count) < 0) {
        return ERROR;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(map, &pos, &key, &value)) {
        double x;
        int rc = put_str(b, key, 1);
        if (rc != OK) {
            return rc;
        }
        if (as_finite(value, &x) != OK) {
            return REFUSE;
        }
        if (unit_interval && !(x >= 0.0 && x <= 1.0)) {
            return REFUSE;
        }
        if (put_double(b, x) < 0) {
            return ERROR;
        }
    }
    return put_long(b, 0) < 0 ? ERROR : OK;
}

static PyObject *encode_prediction(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 13) {
        PyErr_Format(PyExc_TypeError, "encode_prediction takes 13 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *header = args[0], *event_id = args[1], *event_time = args[2], *prediction_id = args[3],
             *deployment = args[4], *model_name = args[5], *model_version = args[6], *role = args[7],
             *features = args[8], *label = args[9], *score = args[10], *probabilities = args[11],
             *latency_ms = args[12];
    if (!PyBytes_CheckExact(header)) {
        PyErr_SetString(PyExc_TypeError, "header must be bytes");
        return NULL;
    }
    if (label == Py_None && score == Py_None) { /* a prediction needs a label or a score */
        Py_RETURN_NONE;
    }
    if (!PyUnicode_CheckExact(role)) {
        Py_RETURN_NONE;
    }
    long long role_index = -1;
    for (int i = 0; i < N_ROLES; i++) {
        if (PyUnicode_CompareWithASCIIString(role, ROLE_SYMBOLS[i]) == 0) {
            role_index = i;
            break;
        }
    }
    if (role_index < 0 || !PyLong_CheckExact(event_time)) {
        Py_RETURN_NONE;
    }
    int overflow = 0;
    long long millis = PyLong_AsLongLongAndOverflow(event_time, &overflow);
    if (overflow || (millis == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }

    Buffer b;
    buf_init(&b);
    int rc = put_raw(&b, PyBytes_AS_STRING(header), PyBytes_GET_SIZE(header)) < 0 ? ERROR : OK;
#define STEP(expr)        \
    if (rc == OK) {       \
        rc = (expr);      \
    }
    STEP(put_str(&b, event_id, 0))
    STEP(put_long(&b, millis) < 0 ? ERROR : OK)
    STEP(put_str(&b, prediction_id, 0))
    STEP(put_str(&b, deployment, 0))
    STEP(put_str(&b, model_name, 1))
    STEP(put_str(&b, model_version, 0))
    STEP(put_long(&b, role_index) < 0 ? ERROR : OK)
    STEP(put_number_map(&b, features, 1, 0))
    if (rc == OK) { /* label: union [null, string] */
        if (label == Py_None) {
            rc = put_long(&b, 0) < 0 ? ERROR : OK;
        } else {
            rc = put_long(&b, 1) < 0 ? ERROR : put_str(&b, label, 1);
        }
    }
    if (rc == OK) { /* score: union [null, double] */
        if (score == Py_None) {
            rc = put_long(&b, 0) < 0 ? ERROR : OK;
        } else {
            double x;
            rc = as_finite(score, &x);
            STEP(put_long(&b, 1) < 0 || put_double(&b, x) < 0 ? ERROR : OK)
        }
    }
    if (rc == OK) { /* probabilities: None means none */
        if (probabilities == Py_None) {
            rc = put_long(&b, 0) < 0 ? ERROR : OK;
        } else {
            rc = put_number_map(&b, probabilities, 0, 1);
        }
    }
    if (rc == OK) {
        double x;
        rc = as_finite(latency_ms, &x);
        STEP(put_double(&b, x) < 0 ? ERROR : OK)
    }
#undef STEP
    PyObject *result = NULL;
    if (rc == OK) {
        result = PyBytes_FromStringAndSize(b.data, b.len);
    } else if (rc == REFUSE) {
        result = Py_NewRef(Py_None);
    }
    buf_free(&b);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_prediction", (PyCFunction)(void (*)(void))encode_prediction, METH_FASTCALL,
     "encode_prediction(header, event_id, event_time, prediction_id, deployment, model_name, model_version, "
     "role, features, label, score, probabilities, latency_ms) -> bytes | None\n\n"
     "header + the Avro encoding of a PredictionLogged record, or None when the arguments are not the "
     "plain valid case (the caller's Python path then checks and names the field)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "streams._speedups",
    "C hot path of CtloopClient.log_prediction (optional; see streams/_speedups.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    return PyModule_Create(&module_def);
}
