/* One pass over a request's messages for what every routing decision reads of them.
 *
 * ``scan(messages)`` reads each message's ``role``, ``content`` and ``tool_calls``
 * straight from its instance dict (where pydantic keeps a model's fields), and gives
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
scan(PyObject *module, PyObject *messages)
{
    if (!PyList_CheckExact(messages))
        Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(messages);
    Py_ssize_t text_tokens = 0, users = 0, systems = 0;
    PyObject *last = NULL;   /* borrowed: the last user message's content */
    PyObject *system = NULL; /* borrowed: the first system message's content */
    PyObject *more = NULL;   /* new: every system message's text, once there are two */
    PyObject *result = NULL;

    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *message = PyList_GET_ITEM(messages, i);
        PyObject *dict = PyObject_GenericGetDict(message, NULL);
        if (dict == NULL) {
            PyErr_Clear();
            goto python_path;
        }
        /* The dict stays owned by the message, which the list holds: what is read
         * from it stays alive while no Python code runs, and none does below. */
        Py_DECREF(dict);
        if (!PyDict_CheckExact(dict))
            goto python_path;
        /* (borrowed; NULL when the field is not in the dict, or on an error) */
        PyObject *role = PyDict_GetItemWithError(dict, str_role);
        PyObject *content = role ? PyDict_GetItemWithError(dict, str_content) : NULL;
        PyObject *calls = content ? PyDict_GetItemWithError(dict, str_tool_calls) : NULL;
        if (calls == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto python_path;
        }
        if (calls != Py_None && !(PyList_CheckExact(calls) && PyList_GET_SIZE(calls) == 0))
            goto python_path;
        if (content != Py_None) {
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
        if (!PyUnicode_CheckExact(role))
            goto python_path;
        if (PyUnicode_CompareWithASCIIString(role, "user") == 0) {
            users++;
            last = content;
        }
        else if (PyUnicode_CompareWithASCIIString(role, "system") == 0
                 || PyUnicode_CompareWithASCIIString(role, "developer") == 0) {
            PyObject *text = content == Py_None ? str_empty : content;
            if (++systems == 1) {
                system = text;
            }
            else {
                if (more == NULL) {
                    more = PyList_New(0);
                    if (more == NULL || PyList_Append(more, system) < 0)
                        goto error;
                }
                if (PyList_Append(more, text) < 0)
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
        joined = system == NULL ? str_empty : system;
        Py_INCREF(joined);
    }
    PyObject *text = last == NULL || last == Py_None ? str_empty : last;
    result = Py_BuildValue("(nONn)", text_tokens, text, joined, count == 1 ? count : users);
    Py_XDECREF(more);
    return result;

python_path:
    Py_XDECREF(more);
    Py_RETURN_NONE;

error:
    Py_XDECREF(more);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)scan, METH_O,
     "scan(messages) -> (text tokens, last user text, system text, turns), or None "
     "when a message needs the Python path."},
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
