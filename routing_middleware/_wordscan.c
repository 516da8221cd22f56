/* The built-in classifier's pass over a text's words, in one C loop.
 *
 * A WordScan holds every word the classifier has looked at (folded as the Python
 * path folds them: punctuation made a separator, digits made '0') with what the
 * word brings: its cue classes, the phrases it may start, the code markers it may
 * be part of, and whether it holds a folded digit. ``scan`` splits a lowered,
 * UTF-8 encoded text as ``bytes.translate(fold).split()`` does and, with no
 * Python object per word, adds up what its distinct words bring. Words it has not
 * seen are handed back for the Python side to look at and ``add``. ``features``
 * does the rest of the scorer's reading of a plain-ASCII text as well (lowering,
 * list steps and questions, code markers, maths signs), so the scorer's Python only
 * weighs the counts.
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
    PyObject *markers; /* tuple of bytes by marker bit (for ``features``) */
    uint32_t always;   /* marker bits ``features`` looks for whatever the words say */
    PyObject *latex;   /* tuple of bytes: maths markup ``features`` counts */
} WordScan;

#define GREETING 32 /* an entry flag beside the classes: the word is a greeting */

static inline int
is_space(unsigned char c)
{
    /* what bytes.split() splits on */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

/* A word's hash: its bytes loaded eight to a 64-bit chunk, chunks mixed in, then a
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

/* The mixed chunks of a word's whole eight bytes (all but its last, partial chunk). */
static inline uint64_t
hash_chunks(const unsigned char *p, Py_ssize_t n)
{
    uint64_t h = 0, chunk;
    for (Py_ssize_t i = 0; i + 8 <= n; i += 8) {
        memcpy(&chunk, p + i, 8);
        h = (h ^ chunk) * 0x9e3779b97f4a7c15ULL;
    }
    return h;
}

static inline uint64_t
hash_bytes(const unsigned char *p, Py_ssize_t n)
{
    uint64_t chunk = 0;
    Py_ssize_t whole = n & ~(Py_ssize_t)7;
    memcpy(&chunk, p + whole, (size_t)(n - whole));
    return mix(hash_chunks(p, n) ^ chunk);
}

/* What ``hash_bytes`` gives for a word followed by at least PAD zero bytes (``pass_words``
 * pads the words it folds): its last chunk loads whole, with no copy of a variable
 * length (a library call per word). */
#define PAD 8

static inline uint64_t
hash_padded(const unsigned char *p, Py_ssize_t n)
{
    uint64_t chunk;
    memcpy(&chunk, p + (n & ~(Py_ssize_t)7), 8);
    return mix(hash_chunks(p, n) ^ chunk);
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
    Py_XDECREF(self->markers);
    Py_XDECREF(self->latex);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
WordScan_init(WordScan *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fold", "phrases", "markers", "always", "latex", NULL};
    Py_buffer fold;
    PyObject *phrases, *markers = NULL, *latex = NULL;
    unsigned int always = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*O!|$O!IO!", kwlist, &fold, &PyTuple_Type,
                                     &phrases, &PyTuple_Type, &markers, &always, &PyTuple_Type,
                                     &latex))
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
    if (markers != NULL && PyTuple_GET_SIZE(markers) > 32) {
        PyErr_SetString(PyExc_ValueError, "at most 32 markers");
        return -1;
    }
    PyObject *lists[2] = {markers, latex};
    for (int k = 0; k < 2; k++) {
        for (Py_ssize_t i = 0; lists[k] != NULL && i < PyTuple_GET_SIZE(lists[k]); i++) {
            if (!PyBytes_Check(PyTuple_GET_ITEM(lists[k], i))) {
                PyErr_SetString(PyExc_TypeError, "markers and latex must be tuples of bytes");
                return -1;
            }
        }
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
    Py_XINCREF(markers);
    Py_XSETREF(self->markers, markers);
    Py_XINCREF(latex);
    Py_XSETREF(self->latex, latex);
    self->always = always;
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

/* add(word, flags, phrases, markers, folded): what ``word`` (folded) brings; flag 32
 * marks a greeting (see ``features``). */
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
    e->flags = (uint8_t)(flags & (31 | GREETING));
    e->phrases = phrases;
    e->markers = markers;
    e->folded = (uint8_t)folded;
    PyBuffer_Release(&word);
    Py_RETURN_NONE;
}

/* Whether ``needle`` occurs in ``text``. */
static int
contains(const unsigned char *text, Py_ssize_t n, const char *needle, Py_ssize_t m)
{
    if (m == 0)
        return 1;
    if (m > n)
        return 0;
    const unsigned char *at = text, *end = text + n - m;
    while (at <= end) {
        const unsigned char *hit = memchr(at, (unsigned char)needle[0], end - at + 1);
        if (hit == NULL)
            return 0;
        if (memcmp(hit, needle, m) == 0)
            return 1;
        at = hit + 1;
    }
    return 0;
}

/* What one pass over a text's words found. */
typedef struct {
    long counts[CLASSES]; /* distinct cue words, then phrases found, by class */
    uint32_t markers;     /* marker bits of the words */
    int folded;           /* a cue word holds a folded digit */
    Py_ssize_t first;     /* the first word's entry, -1 for none */
    Py_ssize_t first_start, first_len; /* where its folded bytes lie in ``buf`` */
    PyObject *unseen;     /* words never added, one per occurrence, or NULL */
} Found;

/* The pass ``scan`` describes, over the lowered ``text`` of ``n`` bytes, folding
 * each word into ``buf`` (``n`` + PAD bytes: each word is hashed with zeros after
 * it); -1 on error. Phrases are counted only when every word was seen. */
static int
pass_words(WordScan *self, const unsigned char *text, Py_ssize_t n, unsigned char *buf,
           Found *out)
{
    const unsigned char *fold = self->fold, *sep = self->sep;
    if (++self->stamp == 0) { /* wrapped: no entry may look scanned already */
        for (Py_ssize_t k = 0; k < self->used; k++)
            self->entries[k].stamp = 0;
        self->stamp = 1;
    }
    uint32_t stamp = self->stamp;
    uint64_t phrases = 0;
    memset(out, 0, sizeof(*out));
    out->first = -1;
    int have_first = 0;
    Py_ssize_t i = 0, len_all = 0;
    while (i < n) {
        if (sep[text[i]]) {
            i++;
            continue;
        }
        /* one word, folded into ``buf``; the first word keeps its stretch of ``buf``
         * so that it stays readable */
        unsigned char *word = buf + len_all;
        Py_ssize_t len = 0;
        do {
            word[len++] = fold[text[i++]];
        } while (i < n && !sep[text[i]]);
        memset(word + len, 0, PAD);
        uint64_t h = hash_padded(word, len);
        Py_ssize_t at = find(self, word, len, h);
        if (!have_first) {
            have_first = 1;
            out->first = at;
            out->first_start = len_all;
            out->first_len = len;
            len_all += len; /* keep the first word's bytes */
        }
        if (at < 0) {
            if (out->unseen == NULL && (out->unseen = PyList_New(0)) == NULL)
                return -1;
            PyObject *w = PyBytes_FromStringAndSize((const char *)word, len);
            if (w == NULL || PyList_Append(out->unseen, w) < 0) {
                Py_XDECREF(w);
                return -1;
            }
            Py_DECREF(w);
            continue;
        }
        Entry *e = &self->entries[at];
        if (e->stamp == stamp)
            continue; /* counted already: distinct words */
        e->stamp = stamp;
        uint8_t flags = e->flags & 31;
        if (flags) { /* (most words are no cue) */
            for (int c = 0; c < CLASSES; c++)
                out->counts[c] += (flags >> c) & 1;
        }
        phrases |= e->phrases;
        out->markers |= e->markers;
        out->folded |= e->folded && flags;
    }
    if (out->unseen != NULL)
        return 0;
    for (int bit = 0; phrases && bit < MAX_PHRASES; bit++) {
        if (!(phrases & ((uint64_t)1 << bit)))
            continue;
        phrases &= ~((uint64_t)1 << bit);
        if (bit >= PyTuple_GET_SIZE(self->phrases))
            break;
        PyObject *pair = PyTuple_GET_ITEM(self->phrases, bit);
        long flag = PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
        PyObject *phrase = PyTuple_GET_ITEM(pair, 1);
        if (contains(text, n, PyBytes_AS_STRING(phrase), PyBytes_GET_SIZE(phrase))) {
            for (int c = 0; c < CLASSES; c++)
                if (flag == (1L << c))
                    out->counts[c]++;
        }
    }
    return 0;
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
    unsigned char small[4096 + PAD];
    unsigned char *buf = small;
    if (n + PAD > (Py_ssize_t)sizeof(small)) {
        buf = PyMem_Malloc(n + PAD);
        if (buf == NULL)
            return PyErr_NoMemory();
    }
    Found found;
    PyObject *first = NULL, *result = NULL;
    if (pass_words(self, text, n, buf, &found) < 0)
        goto done;
    if (found.unseen != NULL) {
        result = PyTuple_Pack(4, Py_None, found.unseen, Py_None, Py_None);
        goto done;
    }
    if (found.first_len > 0) {
        first = PyBytes_FromStringAndSize((const char *)buf + found.first_start, found.first_len);
        if (first == NULL)
            goto done;
    }
    PyObject *list = PyList_New(17);
    if (list == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < 17; k++) {
        long value = 0;
        for (int c = 0; c < CLASSES; c++)
            if (k == (1L << c))
                value = found.counts[c];
        PyObject *v = PyLong_FromLong(value);
        if (v == NULL) {
            Py_DECREF(list);
            goto done;
        }
        PyList_SET_ITEM(list, k, v);
    }
    PyObject *bits = PyLong_FromUnsignedLong(found.markers);
    if (bits == NULL) {
        Py_DECREF(list);
        goto done;
    }
    result = PyTuple_Pack(4, list, bits, found.folded ? Py_True : Py_False,
                          first != NULL ? first : Py_None);
    Py_DECREF(list);
    Py_DECREF(bits);
done:
    if (buf != small)
        PyMem_Free(buf);
    Py_XDECREF(found.unseen);
    Py_XDECREF(first);
    return result;
}

/* What ``re``'s ``\s`` matches among ASCII characters (``str.isspace``). */
static inline int
is_unicode_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* The line breaks of ``str.splitlines`` among ASCII characters. */
static inline int
is_line_break(unsigned char c)
{
    return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e);
}

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Whether the line ``p[0:n]`` starts like a list step: ``\s*(?:\d+[.)]|[-*])\s+\S``. */
static int
is_step(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n && is_unicode_space(p[i]))
        i++;
    if (i < n && is_digit(p[i])) {
        while (i < n && is_digit(p[i]))
            i++;
        if (i >= n || (p[i] != '.' && p[i] != ')'))
            return 0;
    }
    else if (i >= n || (p[i] != '-' && p[i] != '*'))
        return 0;
    i++;
    if (i >= n || !is_unicode_space(p[i]))
        return 0;
    while (i < n && is_unicode_space(p[i]))
        i++;
    return i < n;
}

/* The questions and list steps of ``text``: its '?' and, when it holds a newline,
 * the lines ``str.splitlines`` gives that start like a step. */
static long
steps_of(const unsigned char *text, Py_ssize_t n)
{
    long steps = 0;
    int newline = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        steps += text[i] == '?';
        newline |= text[i] == '\n';
    }
    if (!newline)
        return steps;
    Py_ssize_t start = 0;
    while (start < n) {
        Py_ssize_t end = start;
        while (end < n && !is_line_break(text[end]))
            end++;
        steps += is_step(text + start, end - start);
        if (end < n && text[end] == '\r' && end + 1 < n && text[end + 1] == '\n')
            end++;
        start = end + 1;
    }
    return steps;
}

/* Whether ``text`` holds arithmetic, as classify.py's ``_ARITHMETIC`` finds it: a
 * digit after one of '=<>^', or two digits around one of '^', '*', '/', spaces
 * allowed between (looked for only when '=', '^', '*' or '/' is in the text). */
static int
has_arithmetic(const unsigned char *text, Py_ssize_t n)
{
    if (!memchr(text, '=', n) && !memchr(text, '^', n) && !memchr(text, '*', n)
        && !memchr(text, '/', n))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = text[i];
        Py_ssize_t j = i + 1;
        if (c == '=' || c == '<' || c == '>' || c == '^') {
            while (j < n && is_unicode_space(text[j]))
                j++;
            if (j < n && is_digit(text[j]))
                return 1;
        }
        else if (is_digit(c)) {
            while (j < n && is_unicode_space(text[j]))
                j++;
            if (j >= n || (text[j] != '^' && text[j] != '*' && text[j] != '/'))
                continue;
            j++;
            while (j < n && is_unicode_space(text[j]))
                j++;
            if (j < n && is_digit(text[j]))
                return 1;
        }
    }
    return 0;
}

/* How many of ``needles`` (a tuple of bytes, or NULL) whose bit is in ``bits`` are in
 * ``text``. */
static long
count_in(const unsigned char *text, Py_ssize_t n, PyObject *needles, uint32_t bits)
{
    long found = 0;
    for (Py_ssize_t k = 0; needles != NULL && k < PyTuple_GET_SIZE(needles); k++) {
        if (k < 32 && !(bits & ((uint32_t)1 << k)))
            continue;
        PyObject *needle = PyTuple_GET_ITEM(needles, k);
        found += contains(text, n, PyBytes_AS_STRING(needle), PyBytes_GET_SIZE(needle));
    }
    return found;
}

/* A tuple of seven ints. */
static PyObject *
counts_tuple(const long *values)
{
    PyObject *tuple = PyTuple_New(7);
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < 7; k++) {
        PyObject *v = PyLong_FromLong(values[k]);
        if (v == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, k, v);
    }
    return tuple;
}

/* features(text) -> (maths, reasoning, domain, steps, tasks, simple, code), the counts
 * the built-in scorer weighs, for a plain-ASCII ``text``; a list of the words never
 * added (see ``scan``); or None when ``text`` is not plain ASCII or a cue word in it
 * holds a folded digit, which the Python path reads instead.
 *
 * maths: maths cue words and phrases, latex markup found, and 1 for arithmetic;
 * reasoning, domain, tasks: cue words and phrases; steps: questions and list steps;
 * simple: 1 for a text under 400 characters with a simple cue or a greeting first;
 * code: code markers found (looked for where the words point, and ``always``). */
static PyObject *
WordScan_features(WordScan *self, PyObject *arg)
{
    if (!initialised(self))
        return NULL;
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "features() takes str");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(arg) < 0) /* (a legacy string; every str is ready from 3.12) */
        return NULL;
#endif
    if (!PyUnicode_IS_ASCII(arg))
        Py_RETURN_NONE;
    const unsigned char *text = PyUnicode_1BYTE_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    if (n == 0) { /* no words, no signs */
        long zeros[7] = {0};
        return counts_tuple(zeros);
    }
    unsigned char small[8192 + PAD];
    unsigned char *lowered = small;
    if (2 * n + PAD > (Py_ssize_t)sizeof(small)) {
        lowered = PyMem_Malloc(2 * n + PAD);
        if (lowered == NULL)
            return PyErr_NoMemory();
    }
    unsigned char *buf = lowered + n;
    Py_ssize_t i = 0;
    do { /* (n > 0: a do-loop, which the compiler sees fills ``lowered``) */
        unsigned char c = text[i];
        lowered[i] = c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
    } while (++i < n);
    Found found;
    PyObject *result = NULL;
    if (pass_words(self, lowered, n, buf, &found) < 0)
        goto done;
    if (found.unseen != NULL) {
        result = found.unseen;
        found.unseen = NULL;
        goto done;
    }
    if (found.folded) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    long *counts = found.counts; /* by class: 1, 2, 4, 8, 16 at 0..4 */
    int greeting = found.first >= 0 && (self->entries[found.first].flags & GREETING);
    long simple = n < 400 && (counts[4] > 0 || greeting);
    long maths = counts[3];
    if (memchr(text, '\\', n))
        maths += count_in(text, n, self->latex, UINT32_MAX);
    maths += has_arithmetic(text, n);
    long code = count_in(text, n, self->markers, found.markers | self->always);
    long values[7] = {maths, counts[0], counts[2], steps_of(text, n), counts[1], simple, code};
    result = counts_tuple(values);
done:
    if (lowered != small)
        PyMem_Free(lowered);
    Py_XDECREF(found.unseen);
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
    {"features", (PyCFunction)WordScan_features, METH_O,
     "features(text) -> the scorer's counts of a plain-ASCII text, unseen words, or None."},
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
