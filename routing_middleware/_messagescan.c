/* One pass over a request's messages for what every routing decision reads of them.
 *
 * ``scan(message_type, messages)`` reads each message's ``role``, ``content`` and
 * ``tool_calls`` straight from its instance dict (where pydantic keeps a model's
 * fields), for messages of exactly ``message_type`` (``schema.Message``), and gives
 * the token count of the message texts, the last user message's text, the system
 * and developer messages' texts joined, and the number of turns: what
 * ``tokens.request_tokens_and_images`` and ``classify.request_texts`` read, minus the
 * framing tokens and tools they add in Python. It answers for the common message
 * only: text that is a plain-ASCII ``str`` or no text, and no tool calls. For any
 * other message, or a message it cannot read so, it gives ``None`` and the Python
 * path reads the request; the two give the same answers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *str_role, *str_content, *str_tool_calls, *str_empty, *str_separator;

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan() takes the message type and the messages");
        return NULL;
    }
    PyObject *message_type = args[0], *messages = args[1];
    if (!PyList_CheckExact(messages))
        Py_RETURN_NONE;
    Py_ssize_t text_tokens = 0, users = 0, systems = 0;
    /* Held (new references): allocating below may run a collection, and with it
     * finalizers that could change the messages. */
    PyObject *message = NULL; /* the message being read */
    PyObject *dict = NULL;    /* its instance dict */
    PyObject *content = NULL; /* its content */
    PyObject *last = NULL;    /* the last user message's content */
    PyObject *system = NULL;  /* the first system message's text */
    PyObject *more = NULL;    /* every system message's text, once there are two */
    PyObject *result = NULL;

    /* (the size read on every pass: never past the end of a list changed meanwhile) */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(messages); i++) {
        Py_XSETREF(message, Py_NewRef(PyList_GET_ITEM(messages, i)));
        /* Exactly the message type: a subclass may read its text otherwise. */
        if ((PyObject *)Py_TYPE(message) != message_type)
            goto python_path;
        Py_XSETREF(dict, PyObject_GenericGetDict(message, NULL));
        if (dict == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                goto error;
            PyErr_Clear();
            goto python_path;
        }
        /* (borrowed from the held dict; NULL when the field is not in the dict, or on
         * an error) */
        PyObject *role = PyDict_CheckExact(dict) ? PyDict_GetItemWithError(dict, str_role) : NULL;
        PyObject *found = role ? PyDict_GetItemWithError(dict, str_content) : NULL;
        PyObject *calls = found ? PyDict_GetItemWithError(dict, str_tool_calls) : NULL;
        if (calls == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto python_path;
        }
        if (calls != Py_None && !(PyList_CheckExact(calls) && PyList_GET_SIZE(calls) == 0))
            goto python_path;
        if (!PyUnicode_CheckExact(role))
            goto python_path;
        Py_XSETREF(content, Py_NewRef(found == Py_None ? str_empty : found));
        if (found != Py_None) {
            if (!PyUnicode_CheckExact(content))
                goto python_path;
#if PY_VERSION_HEX < 0x030C0000
            if (PyUnicode_READY(content) < 0)
                goto error;
#endif
            if (!PyUnicode_IS_ASCII(content))
                goto python_path;
            text_tokens += (PyUnicode_GET_LENGTH(content) + 3) / 4;
        }
        if (PyUnicode_CompareWithASCIIString(role, "user") == 0) {
            users++;
            Py_XSETREF(last, Py_NewRef(content));
        }
        else if (PyUnicode_CompareWithASCIIString(role, "system") == 0
                 || PyUnicode_CompareWithASCIIString(role, "developer") == 0) {
            if (++systems == 1) {
                system = Py_NewRef(content);
            }
            else {
                if (more == NULL) {
                    more = PyList_New(0);
                    if (more == NULL || PyList_Append(more, system) < 0)
                        goto error;
                }
                if (PyList_Append(more, content) < 0)
                    goto error;
            }
        }
    }

    PyObject *joined;
    if (more != NULL) {
        joined = PyUnicode_Join(str_separator, more);
        if (joined == NULL)
            goto error;
    }
    else {
        joined = Py_NewRef(system == NULL ? str_empty : system);
    }
    Py_ssize_t count = PyList_GET_SIZE(messages);
    result = Py_BuildValue("(nONn)", text_tokens, last == NULL ? str_empty : last, joined,
                           count == 1 ? count : users);
    goto done;

python_path:
    result = Py_NewRef(Py_None);
    goto done;

error:
    result = NULL;

done:
    Py_XDECREF(message);
    Py_XDECREF(dict);
    Py_XDECREF(content);
    Py_XDECREF(last);
    Py_XDECREF(system);
    Py_XDECREF(more);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(message_type, messages) -> (text tokens, last user text, system text, turns), "
     "or None when a message needs the Python path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "routing_middleware._messagescan",
    .m_doc = "A request's messages read in one pass, in C (see tokens.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__messagescan(void)
{
    str_role = PyUnicode_InternFromString("role");
    str_content = PyUnicode_InternFromString("content");
    str_tool_calls = PyUnicode_InternFromString("tool_calls");
    str_empty = PyUnicode_InternFromString("");
    str_separator = PyUnicode_InternFromString("\n\n");
    if (!str_role || !str_content || !str_tool_calls || !str_empty || !str_separator)
        return NULL;
    return PyModule_Create(&module);
}
