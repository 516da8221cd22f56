/* The built-in classifier's pass over a text's words, in one C loop.
 *
 * A WordScan holds every word the classifier has looked at (folded as the Python
 * path folds them: punctuation made a separator, digits made '0') with what the
 * word brings: its cue classes, the phrases it may start, the code markers it may
 * be part of, and whether it holds a folded digit. ``scan`` splits a lowered,
 * UTF-8 encoded text as ``bytes.translate(fold).split()`` does and, with no
 * Python object per word, adds up what its distinct words bring. Words it has not
 * seen are handed back for the Python side to look at and ``add``.
 *
 * The Python path in classify.py is the reference: both give the same counts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define CLASSES 5       /* cue classes: bits 1, 2, 4, 8, 16 */
#define MAX_PHRASES 64  /* phrase bits in a uint64 */

typedef struct {
    uint64_t hash;
    Py_ssize_t offset; /* into the arena */
    Py_ssize_t length;
    uint64_t phrases;
    uint32_t stamp;
    uint32_t markers;
    uint8_t flags;
    uint8_t folded;
} Entry;

typedef struct {
    PyObject_HEAD
    unsigned char fold[256];
    unsigned char sep[256]; /* by input byte: whether it folds to a separator */
    int32_t *slots; /* index into entries, -1 empty; a power of two in size */
    Py_ssize_t mask;
    Entry *entries;
    Py_ssize_t used, capacity;
    char *arena;
    Py_ssize_t arena_used, arena_size;
    uint32_t stamp;
    PyObject *phrases; /* tuple of (flag bit, bytes) by phrase bit */
} WordScan;

static inline int
is_space(unsigned char c)
{
    /* what bytes.split() splits on */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* A word's hash: its bytes packed eight to a 64-bit chunk, chunks mixed in, then a
 * final mix. A word of at most eight bytes hashes by a bijection of its one chunk, so
 * that for such words equal hashes and lengths mean equal bytes (no memcmp). */
static inline uint64_t
mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t
hash_bytes(const unsigned char *p, Py_ssize_t n)
{
    uint64_t h = 0, chunk = 0;
    int shift = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        chunk |= (uint64_t)p[i] << shift;
        shift += 8;
        if (shift == 64) {
            h = (h ^ chunk) * 0x9e3779b97f4a7c15ULL;
            chunk = 0;
            shift = 0;
        }
    }
    return mix(h ^ chunk);
}

static Py_ssize_t
find(WordScan *self, const unsigned char *word, Py_ssize_t n, uint64_t h)
{
    Py_ssize_t i = (Py_ssize_t)(h & (uint64_t)self->mask);
    for (;;) {
        int32_t at = self->slots[i];
        if (at < 0)
            return -1 - i; /* the empty slot it would go in */
        Entry *e = &self->entries[at];
        if (e->hash == h && e->length == n
            && (n <= 8 || memcmp(self->arena + e->offset, word, n) == 0))
            return at;
        i = (i + 1) & self->mask;
    }
}

static int
grow(WordScan *self)
{
    Py_ssize_t size = (self->mask + 1) * 2;
    int32_t *slots = PyMem_Malloc(size * sizeof(int32_t));
    if (slots == NULL)
        return -1;
    memset(slots, 0xff, size * sizeof(int32_t));
    for (Py_ssize_t k = 0; k < self->used; k++) {
        Py_ssize_t i = (Py_ssize_t)(self->entries[k].hash & (uint64_t)(size - 1));
        while (slots[i] >= 0)
            i = (i + 1) & (size - 1);
        slots[i] = (int32_t)k;
    }
    PyMem_Free(self->slots);
    self->slots = slots;
    self->mask = size - 1;
    return 0;
}

static void
WordScan_dealloc(WordScan *self)
{
    PyMem_Free(self->slots);
    PyMem_Free(self->entries);
    PyMem_Free(self->arena);
    Py_XDECREF(self->phrases);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
WordScan_init(WordScan *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fold", "phrases", NULL};
    Py_buffer fold;
    PyObject *phrases;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*O!", kwlist, &fold, &PyTuple_Type, &phrases))
        return -1;
    if (fold.len != 256) {
        PyBuffer_Release(&fold);
        PyErr_SetString(PyExc_ValueError, "fold must be a 256-byte translation table");
        return -1;
    }
    memcpy(self->fold, fold.buf, 256);
    PyBuffer_Release(&fold);
    for (int b = 0; b < 256; b++)
        self->sep[b] = (unsigned char)is_space(self->fold[b]);
    if (PyTuple_GET_SIZE(phrases) > MAX_PHRASES) {
        PyErr_SetString(PyExc_ValueError, "at most 64 phrases");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(phrases); i++) {
        PyObject *item = PyTuple_GET_ITEM(phrases, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2
            || !PyLong_Check(PyTuple_GET_ITEM(item, 0))
            || !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "phrases must be (flag bit, bytes) pairs");
            return -1;
        }
        /* scan() reads the flag as a C long: one that does not fit is refused here */
        if (PyLong_AsLong(PyTuple_GET_ITEM(item, 0)) == -1 && PyErr_Occurred())
            return -1;
    }
    if (self->slots == NULL) {
        self->slots = PyMem_Malloc(1024 * sizeof(int32_t));
        self->entries = PyMem_Malloc(256 * sizeof(Entry));
        self->arena = PyMem_Malloc(4096);
        if (self->slots == NULL || self->entries == NULL || self->arena == NULL) {
            PyMem_Free(self->slots);
            PyMem_Free(self->entries);
            PyMem_Free(self->arena);
            self->slots = NULL;
            self->entries = NULL;
            self->arena = NULL;
            PyErr_NoMemory();
            return -1;
        }
        memset(self->slots, 0xff, 1024 * sizeof(int32_t));
        self->mask = 1023;
        self->capacity = 256;
        self->arena_size = 4096;
    }
    /* last: a WordScan with phrases has its tables (see ``initialised``) */
    Py_INCREF(phrases);
    Py_XSETREF(self->phrases, phrases);
    return 0;
}

/* Whether __init__ has run (WordScan.__new__ alone leaves no tables to look in). */
static int
initialised(WordScan *self)
{
    if (self->phrases != NULL)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "WordScan not initialised");
    return 0;
}

/* add(word, flags, phrases, markers, folded): what ``word`` (folded) brings. */
static PyObject *
WordScan_add(WordScan *self, PyObject *args)
{
    Py_buffer word;
    unsigned int flags;
    unsigned long long phrases;
    unsigned int markers;
    int folded;
    if (!initialised(self))
        return NULL;
    if (!PyArg_ParseTuple(args, "y*IKIp", &word, &flags, &phrases, &markers, &folded))
        return NULL;
    const unsigned char *p = word.buf;
    Py_ssize_t n = word.len;
    uint64_t h = hash_bytes(p, n);
    Py_ssize_t at = find(self, p, n, h);
    if (at < 0) {
        if (self->used >= INT32_MAX - 1) {
            PyBuffer_Release(&word);
            PyErr_SetString(PyExc_OverflowError, "too many words");
            return NULL;
        }
        if ((self->used + 1) * 2 > self->mask + 1) {
            if (grow(self) < 0) {
                PyBuffer_Release(&word);
                return PyErr_NoMemory();
            }
            at = find(self, p, n, h);
        }
        if (self->used == self->capacity) {
            Entry *more = PyMem_Realloc(self->entries, self->capacity * 2 * sizeof(Entry));
            if (more == NULL) {
                PyBuffer_Release(&word);
                return PyErr_NoMemory();
            }
            self->entries = more;
            self->capacity *= 2;
        }
        if (self->arena_used + n > self->arena_size) {
            Py_ssize_t size = self->arena_size * 2;
            while (self->arena_used + n > size)
                size *= 2;
            char *more = PyMem_Realloc(self->arena, size);
            if (more == NULL) {
                PyBuffer_Release(&word);
                return PyErr_NoMemory();
            }
            self->arena = more;
            self->arena_size = size;
        }
        memcpy(self->arena + self->arena_used, p, n);
        Entry *e = &self->entries[self->used];
        e->hash = h;
        e->offset = self->arena_used;
        e->length = n;
        e->stamp = 0;
        self->arena_used += n;
        self->slots[-1 - at] = (int32_t)self->used;
        at = self->used++;
    }
    Entry *e = &self->entries[at];
    e->flags = (uint8_t)(flags & 31);
    e->phrases = phrases;
    e->markers = markers;
    e->folded = (uint8_t)folded;
    PyBuffer_Release(&word);
    Py_RETURN_NONE;
}

/* scan(lowered) -> (counts, markers, folded, first word), or (None, unseen words, None,
 * None) when a word was never added (one entry per occurrence).
 *
 * ``counts`` is a list of 17 ints indexed by class bit: the distinct cue words of
 * each class, plus the phrases found (each phrase once, when its first word is in
 * the text and the phrase in ``lowered``). ``markers``: the marker bits of its
 * words; ``folded``: whether a cue word holds a folded digit; ``first word``: the
 * first folded word (``None`` for a text without words). */
static PyObject *
WordScan_scan(WordScan *self, PyObject *arg)
{
    if (!initialised(self))
        return NULL;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "scan() takes bytes");
        return NULL;
    }
    const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    unsigned char small[4096];
    unsigned char *buf = small;
    if (n > (Py_ssize_t)sizeof(small)) {
        buf = PyMem_Malloc(n);
        if (buf == NULL)
            return PyErr_NoMemory();
    }
    const unsigned char *fold = self->fold, *sep = self->sep;

    if (++self->stamp == 0) { /* wrapped: no entry may look scanned already */
        for (Py_ssize_t k = 0; k < self->used; k++)
            self->entries[k].stamp = 0;
        self->stamp = 1;
    }
    uint32_t stamp = self->stamp;
    long counts[CLASSES] = {0};
    uint64_t phrases = 0;
    uint32_t markers = 0;
    int folded = 0;
    PyObject *unseen = NULL, *first = NULL, *result = NULL;
    Py_ssize_t i = 0;
    while (i < n) {
        if (sep[text[i]]) {
            i++;
            continue;
        }
        /* one word, folded into ``buf`` and hashed as it goes (``hash_bytes``) */
        const unsigned char *word = buf;
        Py_ssize_t len = 0;
        uint64_t h = 0, chunk = 0;
        int shift = 0;
        do {
            unsigned char c = fold[text[i++]];
            buf[len++] = c;
            chunk |= (uint64_t)c << shift;
            shift += 8;
            if (shift == 64) {
                h = (h ^ chunk) * 0x9e3779b97f4a7c15ULL;
                chunk = 0;
                shift = 0;
            }
        } while (i < n && !sep[text[i]]);
        h = mix(h ^ chunk);
        if (first == NULL) {
            first = PyBytes_FromStringAndSize((const char *)word, len);
            if (first == NULL)
                goto done;
        }
        Py_ssize_t at = find(self, word, len, h);
        if (at < 0) {
            if (unseen == NULL && (unseen = PyList_New(0)) == NULL)
                goto done;
            PyObject *w = PyBytes_FromStringAndSize((const char *)word, len);
            if (w == NULL || PyList_Append(unseen, w) < 0) {
                Py_XDECREF(w);
                goto done;
            }
            Py_DECREF(w);
            continue;
        }
        Entry *e = &self->entries[at];
        if (e->stamp == stamp)
            continue; /* counted already: distinct words */
        e->stamp = stamp;
        uint8_t flags = e->flags;
        for (int c = 0; c < CLASSES; c++)
            counts[c] += (flags >> c) & 1;
        phrases |= e->phrases;
        markers |= e->markers;
        folded |= e->folded && flags;
    }
    if (unseen != NULL) {
        result = PyTuple_Pack(4, Py_None, unseen, Py_None, Py_None);
        goto done;
    }
    for (int bit = 0; phrases && bit < MAX_PHRASES; bit++) {
        if (!(phrases & ((uint64_t)1 << bit)))
            continue;
        phrases &= ~((uint64_t)1 << bit);
        if (bit >= PyTuple_GET_SIZE(self->phrases))
            break;
        PyObject *pair = PyTuple_GET_ITEM(self->phrases, bit);
        long flag = PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
        PyObject *phrase = PyTuple_GET_ITEM(pair, 1);
        Py_ssize_t m = PyBytes_GET_SIZE(phrase);
        const char *p = PyBytes_AS_STRING(phrase);
        int found = 0;
        if (m == 0)
            found = 1;
        else if (m <= n) {
            const unsigned char *at = text, *end = text + n - m;
            while (at <= end) {
                const unsigned char *hit = memchr(at, (unsigned char)p[0], end - at + 1);
                if (hit == NULL)
                    break;
                if (memcmp(hit, p, m) == 0) {
                    found = 1;
                    break;
                }
                at = hit + 1;
            }
        }
        if (found) {
            for (int c = 0; c < CLASSES; c++)
                if (flag == (1L << c))
                    counts[c]++;
        }
    }
    PyObject *list = PyList_New(17);
    if (list == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < 17; k++) {
        long value = 0;
        for (int c = 0; c < CLASSES; c++)
            if (k == (1L << c))
                value = counts[c];
        PyObject *v = PyLong_FromLong(value);
        if (v == NULL) {
            Py_DECREF(list);
            goto done;
        }
        PyList_SET_ITEM(list, k, v);
    }
    PyObject *bits = PyLong_FromUnsignedLong(markers);
    if (bits == NULL) {
        Py_DECREF(list);
        goto done;
    }
    result = PyTuple_Pack(4, list, bits, folded ? Py_True : Py_False,
                          first != NULL ? first : Py_None);
    Py_DECREF(list);
    Py_DECREF(bits);
done:
    if (buf != small)
        PyMem_Free(buf);
    Py_XDECREF(unseen);
    Py_XDECREF(first);
    return result;
}

static Py_ssize_t
WordScan_len(WordScan *self)
{
    return self->used;
}

static PyMethodDef WordScan_methods[] = {
    {"add", (PyCFunction)WordScan_add, METH_VARARGS,
     "add(word, flags, phrases, markers, folded): what a folded word brings."},
    {"scan", (PyCFunction)WordScan_scan, METH_O,
     "scan(lowered) -> (counts, markers, folded, first word), or (None, unseen words, None, None)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods WordScan_as_sequence = {
    .sq_length = (lenfunc)WordScan_len,
};

static PyTypeObject WordScanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "routing_middleware._wordscan.WordScan",
    .tp_doc = "The words a classifier has looked at, and a pass over a text's words.",
    .tp_basicsize = sizeof(WordScan),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)WordScan_init,
    .tp_dealloc = (destructor)WordScan_dealloc,
    .tp_methods = WordScan_methods,
    .tp_as_sequence = &WordScan_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "routing_middleware._wordscan",
    .m_doc = "The built-in classifier's word pass in C (see classify.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__wordscan(void)
{
    if (PyType_Ready(&WordScanType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WordScanType);
    if (PyModule_AddObject(m, "WordScan", (PyObject *)&WordScanType) < 0) {
        Py_DECREF(&WordScanType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
