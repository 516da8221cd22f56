/* A routing decision's expected costs, written in one call.
 *
 * ``CostWriter(decimal, quantum, zero, fallback)`` is a callable taking a cost as a
 * whole number of quanta (1e-10 USD) and giving ``(decimal(total) * quantum, text)``,
 * the text being how ``router._usd`` writes that cost: "$0", else dollars with up to
 * six decimals, rounded half to even, trailing zeros dropped. That is what
 * ``router._py_cost_of_units`` does, which it is tested against; a total it cannot
 * hold in 64 bits, or a negative one, goes to ``fallback`` (that function).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *decimal;  /* the Decimal type */
    PyObject *quantum;  /* Decimal("1E-10") */
    PyObject *zero;     /* the cost of a zero total */
    PyObject *fallback; /* the Python function, for totals out of range */
    PyObject *zero_text; /* "$0" */
    vectorcallfunc vectorcall;
} CostWriter;

/* ``micros`` millionths of a dollar as ``_usd`` writes them: "$0", else the dollars,
 * a point and six decimals with trailing zeros (and a bare point) dropped. Into
 * ``buf`` (at least 32 bytes), by hand: snprintf's format parsing costs more than
 * the rest of a call. Gives the length. */
static Py_ssize_t
write_micros(char *buf, long long micros)
{
    if (micros == 0) {
        memcpy(buf, "$0", 2);
        return 2;
    }
    char digits[24];
    int n = 0;
    long long dollars = micros / 1000000, fraction = micros % 1000000;
    do {
        digits[n++] = (char)('0' + dollars % 10);
        dollars /= 10;
    } while (dollars > 0);
    Py_ssize_t at = 0;
    buf[at++] = '$';
    while (n > 0)
        buf[at++] = digits[--n];
    if (fraction) {
        buf[at++] = '.';
        char six[6];
        for (int k = 5; k >= 0; k--) {
            six[k] = (char)('0' + fraction % 10);
            fraction /= 10;
        }
        int keep = 6;
        while (six[keep - 1] == '0')
            keep--;
        memcpy(buf + at, six, (size_t)keep);
        at += keep;
    }
    return at;
}

static PyObject *
CostWriter_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    CostWriter *self = (CostWriter *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a cost writer takes one total, positionally");
        return NULL;
    }
    PyObject *total_obj = args[0];
    if (!PyLong_Check(total_obj)) {
        PyErr_Format(PyExc_TypeError, "a cost total is an int, not %.100s",
                     Py_TYPE(total_obj)->tp_name);
        return NULL;
    }
    int overflow = 0;
    long long total = PyLong_AsLongLongAndOverflow(total_obj, &overflow);
    if (total == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || total < 0 || total > LLONG_MAX - 5000)
        return PyObject_CallOneArg(self->fallback, total_obj);
    if (total == 0)
        return PyTuple_Pack(2, self->zero, self->zero_text);
    long long micros = (total + 5000) / 10000;
    if (total % 20000 == 5000) /* half a millionth over an even count: rounds down */
        micros -= 1;
    char buf[32];
    PyObject *text = PyUnicode_FromStringAndSize(buf, write_micros(buf, micros));
    if (text == NULL)
        return NULL;
    PyObject *whole = PyObject_CallOneArg(self->decimal, total_obj);
    PyObject *cost = whole == NULL ? NULL : PyNumber_Multiply(whole, self->quantum);
    Py_XDECREF(whole);
    if (cost == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(cost);
        Py_DECREF(text);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, cost);
    PyTuple_SET_ITEM(pair, 1, text);
    return pair;
}

static int
CostWriter_init(CostWriter *self, PyObject *args, PyObject *kwds)
{
    PyObject *decimal, *quantum, *zero, *fallback;
    static char *keywords[] = {"decimal", "quantum", "zero", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO:CostWriter", keywords, &decimal,
                                     &quantum, &zero, &fallback))
        return -1;
    if (self->decimal != NULL) { /* (a call under way must not see its parts change) */
        PyErr_SetString(PyExc_RuntimeError, "CostWriter is initialised already");
        return -1;
    }
    if (!PyCallable_Check(decimal) || !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "decimal and fallback must be callable");
        return -1;
    }
    PyObject *zero_text = PyUnicode_FromString("$0");
    if (zero_text == NULL)
        return -1;
    self->zero_text = zero_text;
    self->quantum = Py_NewRef(quantum);
    self->zero = Py_NewRef(zero);
    self->fallback = Py_NewRef(fallback);
    self->decimal = Py_NewRef(decimal); /* last: what marks it initialised */
    self->vectorcall = CostWriter_vectorcall;
    return 0;
}

static PyObject *
CostWriter_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    if (((CostWriter *)self)->decimal == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "CostWriter is not initialised");
        return NULL;
    }
    return PyVectorcall_Call(self, args, kwds);
}

static void
CostWriter_dealloc(CostWriter *self)
{
    Py_XDECREF(self->decimal);
    Py_XDECREF(self->quantum);
    Py_XDECREF(self->zero);
    Py_XDECREF(self->fallback);
    Py_XDECREF(self->zero_text);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CostWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "routing_middleware._costs.CostWriter",
    .tp_doc = "CostWriter(decimal, quantum, zero, fallback): a callable giving a total "
              "of quanta as (Decimal cost, text).",
    .tp_basicsize = sizeof(CostWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(CostWriter, vectorcall),
    .tp_new = PyType_GenericNew, /* (zeroed: not initialised until __init__) */
    .tp_init = (initproc)CostWriter_init,
    .tp_call = CostWriter_call,
    .tp_dealloc = (destructor)CostWriter_dealloc,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "routing_middleware._costs",
    .m_doc = "A routing decision's expected costs, written in C (see router.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__costs(void)
{
    if (PyType_Ready(&CostWriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CostWriterType);
    if (PyModule_AddObject(m, "CostWriter", (PyObject *)&CostWriterType) < 0) {
        Py_DECREF(&CostWriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
