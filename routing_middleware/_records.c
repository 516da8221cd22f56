/* Frozen records made in one call.
 *
 * A frozen dataclass refuses attribute assignment, so its generated ``__init__``
 * (and any code building one field by field) sets each field through
 * ``object.__setattr__``: a slot-wrapper call per field, about a microsecond for
 * the router's eleven-field ``Decision``. ``RecordMaker(cls, names)`` is a callable
 * that makes a ``cls`` from positional values, one per name, setting each with
 * ``PyObject_GenericSetAttr``: what ``object.__new__(cls)`` and those
 * ``object.__setattr__`` calls do, in one C call. Without the extension
 * ``_record_maker.py`` uses the dataclass itself, which makes the same records.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;
    PyObject *names; /* tuple of str */
    vectorcallfunc vectorcall;
} RecordMaker;

static PyObject *
RecordMaker_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    RecordMaker *self = (RecordMaker *)callable;
    Py_ssize_t given = PyVectorcall_NARGS(nargsf);
    Py_ssize_t wanted = PyTuple_GET_SIZE(self->names);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyErr_Format(PyExc_TypeError, "%s maker takes positional values only",
                     self->cls->tp_name);
        return NULL;
    }
    if (given != wanted) {
        PyErr_Format(PyExc_TypeError, "%s maker takes %zd values (%zd given)",
                     self->cls->tp_name, wanted, given);
        return NULL;
    }
    PyObject *record = self->cls->tp_alloc(self->cls, 0);
    if (record == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < wanted; i++) {
        if (PyObject_GenericSetAttr(record, PyTuple_GET_ITEM(self->names, i), args[i]) < 0) {
            Py_DECREF(record);
            return NULL;
        }
    }
    return record;
}

static int
RecordMaker_init(RecordMaker *self, PyObject *args, PyObject *kwds)
{
    PyObject *cls, *names;
    static char *keywords[] = {"cls", "names", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!:RecordMaker", keywords, &PyType_Type,
                                     &cls, &PyTuple_Type, &names))
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(names, i))) {
            PyErr_SetString(PyExc_TypeError, "names must be a tuple of str");
            return -1;
        }
    }
    if (self->cls != NULL) { /* (a call under way must not see its names change) */
        PyErr_SetString(PyExc_RuntimeError, "RecordMaker is initialised already");
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    /* Only what object.__new__ makes: a type with its own __new__ (a builtin's sets up
     * state tp_alloc does not) or an abstract one is refused. */
    if (type->tp_new != PyBaseObject_Type.tp_new || type->tp_alloc == NULL
        || (type->tp_flags & Py_TPFLAGS_IS_ABSTRACT)) {
        PyErr_Format(PyExc_TypeError, "RecordMaker cannot make %s: only classes "
                     "object.__new__ makes", type->tp_name);
        return -1;
    }
    self->names = Py_NewRef(names);
    self->cls = (PyTypeObject *)Py_NewRef(cls); /* last: what marks it initialised */
    self->vectorcall = RecordMaker_vectorcall;
    return 0;
}

static PyObject *
RecordMaker_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    if (((RecordMaker *)self)->cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RecordMaker is not initialised");
        return NULL;
    }
    return PyVectorcall_Call(self, args, kwds);
}

static PyObject *
RecordMaker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    RecordMaker *self = (RecordMaker *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = NULL; /* until __init__: calls go through RecordMaker_call */
    return (PyObject *)self;
}

static void
RecordMaker_dealloc(RecordMaker *self)
{
    Py_XDECREF(self->cls);
    Py_XDECREF(self->names);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject RecordMakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "routing_middleware._records.RecordMaker",
    .tp_doc = "RecordMaker(cls, names): a callable making a cls from one value per name, "
              "each set as object.__setattr__ sets it.",
    .tp_basicsize = sizeof(RecordMaker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(RecordMaker, vectorcall),
    .tp_new = RecordMaker_new,
    .tp_init = (initproc)RecordMaker_init,
    .tp_call = RecordMaker_call,
    .tp_dealloc = (destructor)RecordMaker_dealloc,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "routing_middleware._records",
    .m_doc = "Frozen records made in one call, in C (see _record_maker.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__records(void)
{
    if (PyType_Ready(&RecordMakerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RecordMakerType);
    if (PyModule_AddObject(m, "RecordMaker", (PyObject *)&RecordMakerType) < 0) {
        Py_DECREF(&RecordMakerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
