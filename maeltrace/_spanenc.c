/* maeltrace._spanenc: region rows -> serialised OTLP spans (protobuf or OTLP/JSON).
 *
 * The compiled twin of the pure-Python encoder in maeltrace/otel/_encode.py, which documents
 * the row layout, the fragments and the field order; both write the same bytes. The per-row
 * work runs with the GIL released (PyEval_SaveThread over plain buffers), so the export
 * thread does not hold up a CPU-bound training thread while it encodes; only looking up the
 * fragments (a few dict reads per batch) and making the bytes objects hold the GIL.
 */
#define PY_SSIZE_T_CLEAN
#define _POSIX_C_SOURCE 200809L
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROW_FIELDS 7
#define R_SEQ 0
#define R_PARENT 1
#define R_START 2
#define R_END 3
#define R_KTS 4
#define R_DEVICE 5
#define R_DEVICE_START 6
#define KEY_MASK 0xffffffffULL
#define TEMPLATE_MASK ((1ULL << 56) - 1)
#define STATUS_SHIFT 56
#define NO_PARENT (-1)
#define NO_TRACE (-1)
#define NO_DEVICE_TIME (-1)

/* Nanoseconds spent encoding with the GIL released, for the benchmarks' account of what the
 * export thread takes from the training thread (read with released_ns()). */
static _Atomic long long released_ns;

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static PyObject *
spanenc_released_ns(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLongLong(released_ns);
}

/* Releasing the GIL is worth it for long work only: taking it back makes this thread wait for
 * the training thread's switch interval (5 ms), and each hand-over costs both threads a little.
 * Below these sizes the work takes about 0.05 ms, held. */
#define RELEASE_ROWS 256
#define RELEASE_BYTES (64 * 1024)
#define RELEASE_IF(big) PyThreadState *saved_ = (big) ? PyEval_SaveThread() : NULL
#define REACQUIRE()                                                                              \
    do {                                                                                         \
        if (saved_ != NULL)                                                                      \
            PyEval_RestoreThread(saved_);                                                        \
    } while (0)

/* -- buffers ------------------------------------------------------------------------------ */

static int
get_int64_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->itemsize != 8 || view->format == NULL || (strcmp(view->format, "q") != 0 && strcmp(view->format, "l") != 0)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s: expected int64 values (array('q'))", what);
        return -1;
    }
    return 0;
}

static int
get_rows(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len % (ROW_FIELDS * 8) != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "rows: not a whole number of packed rows");
        return -1;
    }
    return 0;
}

static inline int64_t
row_value(const char *rows, Py_ssize_t row, int field)
{
    int64_t v;
    memcpy(&v, rows + (row * ROW_FIELDS + field) * 8, 8);
    return v;
}

/* -- group -------------------------------------------------------------------------------- */

typedef struct {
    int64_t ordinal;
    Py_ssize_t first, close, count, filled;
    char *data;
} Group;

static PyObject *
spanenc_group(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "group() takes 10 columns and trace_key");
        return NULL;
    }
    static const char *names[10] = {"key_id", "seq", "parent_seq", "start_ns", "end_ns", "status",
                                    "trace", "device_ns", "device_start_ns", "thread"};
    Py_buffer views[10];
    int got = 0;
    PyObject *result = NULL;
    Group *groups = NULL;
    Py_ssize_t ngroups = 0, cap = 0;
    long long trace_key = PyLong_AsLongLong(args[10]);
    if (trace_key == -1 && PyErr_Occurred())
        return NULL;
    for (; got < 10; got++) {
        if (get_int64_buffer(args[got], &views[got], 0, names[got]) < 0)
            goto done;
    }
    Py_ssize_t n = views[0].len / 8;
    for (int i = 1; i < 10; i++) {
        if (views[i].len / 8 != n) {
            PyErr_SetString(PyExc_ValueError, "group(): columns of different lengths");
            goto done;
        }
    }
    const int64_t *key = views[0].buf, *seq = views[1].buf, *parent = views[2].buf,
                  *start = views[3].buf, *end = views[4].buf, *status = views[5].buf,
                  *trace = views[6].buf, *device = views[7].buf, *device_start = views[8].buf,
                  *thread = views[9].buf;
    /* Pass 1: the groups, in order of their first row. */
    Py_ssize_t last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t g = -1;
        if (last >= 0 && groups[last].ordinal == trace[i])
            g = last;
        else {
            for (Py_ssize_t j = 0; j < ngroups; j++) {
                if (groups[j].ordinal == trace[i]) {
                    g = j;
                    break;
                }
            }
        }
        if (g < 0) {
            if (ngroups == cap) {
                cap = cap ? cap * 2 : 4;
                Group *grown = PyMem_Realloc(groups, (size_t)cap * sizeof(Group));
                if (grown == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                groups = grown;
            }
            g = ngroups++;
            groups[g] = (Group){trace[i], i, -1, 0, 0, NULL};
        }
        if (key[i] == trace_key && trace[i] != NO_TRACE && groups[g].close < 0)
            groups[g].close = i;
        groups[g].count++;
        last = g;
    }
    result = PyList_New(ngroups);
    if (result == NULL)
        goto done;
    PyObject **packed = PyMem_Calloc((size_t)(ngroups ? ngroups : 1), sizeof(PyObject *));
    if (packed == NULL) {
        PyErr_NoMemory();
        Py_CLEAR(result);
        goto done;
    }
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        packed[g] = PyBytes_FromStringAndSize(NULL, groups[g].count * ROW_FIELDS * 8);
        if (packed[g] == NULL) {
            for (Py_ssize_t j = 0; j < g; j++)
                Py_DECREF(packed[j]);
            PyMem_Free(packed);
            Py_CLEAR(result);
            goto done;
        }
        groups[g].data = PyBytes_AS_STRING(packed[g]);
    }
    /* Pass 2: the rows, packed, without the GIL. */
    RELEASE_IF(n >= RELEASE_ROWS);
    long long began = now_ns();
    last = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t g = last;
        if (groups[g].ordinal != trace[i]) {
            for (g = 0; groups[g].ordinal != trace[i]; g++) {
            }
        }
        int64_t row[ROW_FIELDS] = {
            seq[i],
            parent[i],
            start[i],
            end[i],
            (int64_t)(((uint64_t)key[i] & KEY_MASK) | ((uint64_t)thread[i] << 32) |
                      ((uint64_t)status[i] << STATUS_SHIFT)),
            device[i],
            device_start[i],
        };
        memcpy(groups[g].data + groups[g].filled * ROW_FIELDS * 8, row, sizeof(row));
        groups[g].filled++;
        last = g;
    }
    if (saved_ != NULL)
        released_ns += now_ns() - began;
    REACQUIRE();
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        PyObject *item = Py_BuildValue("(LnnN)", (long long)groups[g].ordinal, groups[g].first,
                                       groups[g].close, packed[g]);
        if (item == NULL) {
            for (Py_ssize_t j = g + 1; j < ngroups; j++)
                Py_DECREF(packed[j]);
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, g, item);
    }
    PyMem_Free(packed);
done:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(groups);
    return result;
}

/* -- sort_rows, special_rows, template_keys ------------------------------------------------ */

static int
compare_rows(const void *a, const void *b)
{
    int64_t x, y;
    memcpy(&x, (const char *)a + R_SEQ * 8, 8);
    memcpy(&y, (const char *)b + R_SEQ * 8, 8);
    return (x > y) - (x < y);
}

static PyObject *
spanenc_sort_rows(PyObject *module, PyObject *rows_obj)
{
    (void)module;
    Py_buffer rows;
    if (get_rows(rows_obj, &rows) < 0)
        return NULL;
    Py_ssize_t n = rows.len / (ROW_FIELDS * 8);
    int sorted = 1;
    for (Py_ssize_t i = 0; i + 1 < n && sorted; i++)
        sorted = row_value(rows.buf, i, R_SEQ) < row_value(rows.buf, i + 1, R_SEQ);
    PyObject *out;
    if (sorted && PyBytes_CheckExact(rows_obj)) {
        out = Py_NewRef(rows_obj);
    }
    else {
        out = PyBytes_FromStringAndSize(rows.buf, rows.len);
        if (out != NULL && !sorted) {
            char *data = PyBytes_AS_STRING(out);
            RELEASE_IF(n >= RELEASE_ROWS);
            long long began = now_ns();
            qsort(data, (size_t)n, ROW_FIELDS * 8, compare_rows);
            if (saved_ != NULL)
                released_ns += now_ns() - began;
            REACQUIRE();
        }
    }
    PyBuffer_Release(&rows);
    return out;
}

static PyObject *
spanenc_special_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "special_rows(rows, trace_key, roots)");
        return NULL;
    }
    long long trace_key = PyLong_AsLongLong(args[1]);
    if (trace_key == -1 && PyErr_Occurred())
        return NULL;
    int roots = PyObject_IsTrue(args[2]);
    if (roots < 0)
        return NULL;
    Py_buffer rows;
    if (get_rows(args[0], &rows) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    Py_ssize_t n = rows.len / (ROW_FIELDS * 8);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        uint64_t kts = (uint64_t)row_value(rows.buf, i, R_KTS);
        if ((kts >> STATUS_SHIFT) != 0 || (long long)(kts & KEY_MASK) == trace_key ||
            (roots && row_value(rows.buf, i, R_PARENT) == NO_PARENT)) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(out, index) < 0)
                Py_CLEAR(out);
            Py_XDECREF(index);
        }
    }
    PyBuffer_Release(&rows);
    return out;
}

static PyObject *
spanenc_template_keys(PyObject *module, PyObject *rows_obj)
{
    (void)module;
    Py_buffer rows;
    if (get_rows(rows_obj, &rows) < 0)
        return NULL;
    PyObject *out = PySet_New(NULL);
    Py_ssize_t n = rows.len / (ROW_FIELDS * 8);
    uint64_t seen[8];
    int nseen = 0, next = 0;
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        uint64_t tkey = (uint64_t)row_value(rows.buf, i, R_KTS) & TEMPLATE_MASK;
        int known = 0;
        for (int j = 0; j < nseen && !known; j++)
            known = seen[j] == tkey;
        if (known)
            continue;
        /* A few recent keys spare most rows a Python int; the set removes repeats. */
        seen[next] = tkey;
        next = (next + 1) % 8;
        if (nseen < 8)
            nseen++;
        PyObject *value = PyLong_FromUnsignedLongLong(tkey);
        if (value == NULL || PySet_Add(out, value) < 0)
            Py_CLEAR(out);
        Py_XDECREF(value);
    }
    PyBuffer_Release(&rows);
    return out;
}

/* -- encode ------------------------------------------------------------------------------- */

typedef struct {
    const char *p;
    Py_ssize_t n;
} Frag;

typedef struct {
    uint64_t tkey;
    int used;
    Frag f[4]; /* head, attrs, gpu head, gpu key attribute */
} Template;

typedef struct {
    Py_ssize_t row;
    Frag trace, parent, extra, tail;
    int has_trace, has_parent;
} Special;

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} Out;

static int
reserve(Out *o, size_t more)
{
    if (o->len + more <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + more)
        cap *= 2;
    char *grown = PyMem_RawRealloc(o->p, cap);
    if (grown == NULL) {
        o->failed = 1;
        return -1;
    }
    o->p = grown;
    o->cap = cap;
    return 0;
}

static inline void
put(Out *o, const void *p, size_t n)
{
    memcpy(o->p + o->len, p, n);
    o->len += n;
}

static inline void
put_byte(Out *o, unsigned char b)
{
    o->p[o->len++] = (char)b;
}

static inline size_t
varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline void
put_varint(Out *o, uint64_t v)
{
    while (v >= 0x80) {
        put_byte(o, (unsigned char)((v & 0x7f) | 0x80));
        v >>= 7;
    }
    put_byte(o, (unsigned char)v);
}

static inline void
put_fixed64(Out *o, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        put_byte(o, (unsigned char)(v >> (8 * i)));
}

static inline void
put_hex(Out *o, const char *p, Py_ssize_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        put_byte(o, (unsigned char)digits[c >> 4]);
        put_byte(o, (unsigned char)digits[c & 15]);
    }
}

static inline void
put_u64_decimal(Out *o, uint64_t v)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        put_byte(o, (unsigned char)digits[--n]);
}

static inline void
put_i64_decimal(Out *o, int64_t v)
{
    if (v < 0) {
        put_byte(o, '-');
        put_u64_decimal(o, (uint64_t)0 - (uint64_t)v);
    }
    else
        put_u64_decimal(o, (uint64_t)v);
}

#define PUT_LITERAL(o, s) put((o), (s), sizeof(s) - 1)

static const char *INT_KEYS[3] = {"maeltrace.index", "maeltrace.cpu.duration_ns",
                                  "maeltrace.gpu.duration_ns"};
enum { K_INDEX, K_CPU, K_GPU };

static void
pb_int(Out *o, int which, int64_t value)
{
    size_t key_len = strlen(INT_KEYS[which]);
    size_t value_len = varint_size((uint64_t)value);
    size_t any_len = 1 + value_len;
    size_t body = 1 + varint_size(key_len) + key_len + 1 + varint_size(any_len) + any_len;
    put_byte(o, 0x4a);
    put_varint(o, body);
    put_byte(o, 0x0a);
    put_varint(o, key_len);
    put(o, INT_KEYS[which], key_len);
    put_byte(o, 0x12);
    put_varint(o, any_len);
    put_byte(o, 0x18);
    put_varint(o, (uint64_t)value);
}

static void
json_int(Out *o, int which, int64_t value)
{
    PUT_LITERAL(o, "{\"key\":\"");
    put(o, INT_KEYS[which], strlen(INT_KEYS[which]));
    PUT_LITERAL(o, "\",\"value\":{\"intValue\":\"");
    put_i64_decimal(o, value);
    PUT_LITERAL(o, "\"}}");
}

typedef struct {
    Frag trace, span_id, parent, head, attrs, extra, gpu_clock, tail;
    uint64_t start, end;
    int nints, ngpu;
    int64_t ints[2], gpu;
} SpanParts;

static void
pb_span(Out *o, const SpanParts *s)
{
    put_byte(o, 0x0a);
    put_byte(o, 0x10);
    put(o, s->trace.p, (size_t)s->trace.n);
    put_byte(o, 0x12);
    put_byte(o, 0x08);
    put(o, s->span_id.p, (size_t)s->span_id.n);
    if (s->parent.n) {
        put_byte(o, 0x22);
        put_byte(o, 0x08);
        put(o, s->parent.p, (size_t)s->parent.n);
    }
    put(o, s->head.p, (size_t)s->head.n);
    if (s->start) {
        put_byte(o, 0x39);
        put_fixed64(o, s->start);
    }
    if (s->end) {
        put_byte(o, 0x41);
        put_fixed64(o, s->end);
    }
    put(o, s->attrs.p, (size_t)s->attrs.n);
    for (int i = 0; i < s->nints; i++)
        pb_int(o, i == 0 ? K_INDEX : K_CPU, s->ints[i]);
    put(o, s->extra.p, (size_t)s->extra.n);
    if (s->ngpu)
        pb_int(o, K_GPU, s->gpu);
    put(o, s->gpu_clock.p, (size_t)s->gpu_clock.n);
    put(o, s->tail.p, (size_t)s->tail.n);
}

static void
json_span(Out *o, const SpanParts *s)
{
    PUT_LITERAL(o, "{\"traceId\":\"");
    put_hex(o, s->trace.p, s->trace.n);
    PUT_LITERAL(o, "\",\"spanId\":\"");
    put_hex(o, s->span_id.p, s->span_id.n);
    put_byte(o, '"');
    if (s->parent.n) {
        PUT_LITERAL(o, ",\"parentSpanId\":\"");
        put_hex(o, s->parent.p, s->parent.n);
        put_byte(o, '"');
    }
    put_byte(o, ',');
    put(o, s->head.p, (size_t)s->head.n);
    if (s->start) {
        PUT_LITERAL(o, ",\"startTimeUnixNano\":\"");
        put_u64_decimal(o, s->start);
        put_byte(o, '"');
    }
    if (s->end) {
        PUT_LITERAL(o, ",\"endTimeUnixNano\":\"");
        put_u64_decimal(o, s->end);
        put_byte(o, '"');
    }
    PUT_LITERAL(o, ",\"attributes\":[");
    put(o, s->attrs.p, (size_t)s->attrs.n);
    for (int i = 0; i < s->nints; i++) {
        put_byte(o, ',');
        json_int(o, i == 0 ? K_INDEX : K_CPU, s->ints[i]);
    }
    put(o, s->extra.p, (size_t)s->extra.n);
    if (s->ngpu) {
        put_byte(o, ',');
        json_int(o, K_GPU, s->gpu);
    }
    put(o, s->gpu_clock.p, (size_t)s->gpu_clock.n);
    put_byte(o, ']');
    put(o, s->tail.p, (size_t)s->tail.n);
    put_byte(o, '}');
}

static int
frag_of(PyObject *obj, Frag *f, const char *what)
{
    if (!PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
        return -1;
    }
    f->p = PyBytes_AS_STRING(obj);
    f->n = PyBytes_GET_SIZE(obj);
    return 0;
}

/* Fragments of one template key, from the dict (each value a tuple of 4 bytes); NULL with an
 * error set when missing or malformed. The dict keeps the tuple alive: the caller holds a
 * reference to the dict and, for the call, to each tuple it used. */
static int
load_template(PyObject *templates, uint64_t tkey, Template *t, PyObject *keep)
{
    PyObject *k = PyLong_FromUnsignedLongLong(tkey);
    if (k == NULL)
        return -1;
    PyObject *value = PyDict_GetItemWithError(templates, k);
    Py_DECREF(k);
    if (value == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_KeyError, "no template for key %llu", (unsigned long long)tkey);
        return -1;
    }
    if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 4) {
        PyErr_SetString(PyExc_TypeError, "a template is a tuple of 4 bytes");
        return -1;
    }
    if (PyList_Append(keep, value) < 0)
        return -1;
    for (int i = 0; i < 4; i++) {
        if (frag_of(PyTuple_GET_ITEM(value, i), &t->f[i], "a template fragment") < 0)
            return -1;
    }
    t->tkey = tkey;
    t->used = 1;
    return 0;
}

static PyObject *
spanenc_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "encode(rows, json, trace, run_parent, base, offset, counters, templates, "
                        "specials, gpu_clock)");
        return NULL;
    }
    PyObject *templates = args[7], *specials_obj = args[8];
    int json = PyObject_IsTrue(args[1]);
    if (json < 0)
        return NULL;
    Frag trace, run_parent, gpu_clock;
    if (frag_of(args[2], &trace, "trace") < 0 || frag_of(args[3], &run_parent, "run_parent") < 0 ||
        frag_of(args[9], &gpu_clock, "gpu_clock") < 0)
        return NULL;
    if (trace.n != 16 || (run_parent.n != 0 && run_parent.n != 8)) {
        PyErr_SetString(PyExc_ValueError, "trace: 16 bytes; run_parent: 8 bytes or none");
        return NULL;
    }
    uint64_t base = PyLong_AsUnsignedLongLongMask(args[4]);
    if (base == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    long long offset = PyLong_AsLongLong(args[5]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    if (!PyDict_Check(templates)) {
        PyErr_SetString(PyExc_TypeError, "templates must be a dict");
        return NULL;
    }
    PyObject *specials = PySequence_Fast(specials_obj, "specials must be a sequence");
    if (specials == NULL)
        return NULL;
    Py_buffer rows, counters_view;
    if (get_rows(args[0], &rows) < 0) {
        Py_DECREF(specials);
        return NULL;
    }
    if (get_int64_buffer(args[6], &counters_view, 1, "counters") < 0) {
        PyBuffer_Release(&rows);
        Py_DECREF(specials);
        return NULL;
    }
    PyObject *result = NULL, *keep = PyList_New(0);
    Py_ssize_t n = rows.len / (ROW_FIELDS * 8);
    Py_ssize_t ncounters = counters_view.len / 8;
    int64_t *counters = counters_view.buf;
    Py_ssize_t nspecial = PySequence_Fast_GET_SIZE(specials);
    Special *special = PyMem_Calloc((size_t)nspecial + 1, sizeof(Special));
    int32_t *which = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    size_t tcap = 16;
    Template *table = PyMem_Calloc(tcap, sizeof(Template));
    size_t *ends = PyMem_Malloc((size_t)(2 * n + 1) * sizeof(size_t));
    Out out = {NULL, 0, 0, 0};
    if (keep == NULL || special == NULL || which == NULL || table == NULL || ends == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Phase A, with the GIL: the Python objects the rows need, as plain pointers. */
    for (Py_ssize_t i = 0; i < nspecial; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(specials, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 5) {
            PyErr_SetString(PyExc_TypeError, "a special is (row, trace, parent, extra, tail)");
            goto done;
        }
        Special *s = &special[i];
        s->row = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 0));
        if (s->row == -1 && PyErr_Occurred())
            goto done;
        if (s->row < 0 || s->row >= n || (i && s->row <= special[i - 1].row)) {
            PyErr_SetString(PyExc_ValueError, "specials: rows out of range or out of order");
            goto done;
        }
        PyObject *t = PyTuple_GET_ITEM(item, 1), *p = PyTuple_GET_ITEM(item, 2);
        s->has_trace = t != Py_None;
        s->has_parent = p != Py_None;
        if ((s->has_trace && frag_of(t, &s->trace, "a special's trace") < 0) ||
            (s->has_parent && frag_of(p, &s->parent, "a special's parent") < 0) ||
            frag_of(PyTuple_GET_ITEM(item, 3), &s->extra, "a special's attributes") < 0 ||
            frag_of(PyTuple_GET_ITEM(item, 4), &s->tail, "a special's tail") < 0)
            goto done;
        if ((s->has_trace && s->trace.n != 16) || (s->has_parent && s->parent.n != 0 && s->parent.n != 8)) {
            PyErr_SetString(PyExc_ValueError, "specials: trace ids of 16 bytes, span ids of 8");
            goto done;
        }
    }
    special[nspecial].row = -1;
    size_t ntemplates = 0;
    int32_t last = -1;
    size_t bound = 0; /* an upper bound of the output's size */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t kts = (uint64_t)row_value(rows.buf, i, R_KTS);
        uint64_t tkey = kts & TEMPLATE_MASK;
        if ((Py_ssize_t)(kts & KEY_MASK) >= ncounters) {
            PyErr_SetString(PyExc_ValueError, "counters: fewer than the key ids");
            goto done;
        }
        if (last < 0 || table[last].tkey != tkey) {
            size_t slot = (size_t)((tkey * 0x9e3779b97f4a7c15ULL) >> 40) & (tcap - 1);
            while (table[slot].used && table[slot].tkey != tkey)
                slot = (slot + 1) & (tcap - 1);
            if (!table[slot].used) {
                if (load_template(templates, tkey, &table[slot], keep) < 0)
                    goto done;
                if (++ntemplates * 2 > tcap) {
                    /* Grow and rehash; the row indices taken so far are remapped below. */
                    size_t ncap = tcap * 4;
                    Template *grown = PyMem_Calloc(ncap, sizeof(Template));
                    if (grown == NULL) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    int32_t *remap = PyMem_Malloc(tcap * sizeof(int32_t));
                    if (remap == NULL) {
                        PyMem_Free(grown);
                        PyErr_NoMemory();
                        goto done;
                    }
                    for (size_t j = 0; j < tcap; j++) {
                        remap[j] = -1;
                        if (!table[j].used)
                            continue;
                        size_t s = (size_t)((table[j].tkey * 0x9e3779b97f4a7c15ULL) >> 40) & (ncap - 1);
                        while (grown[s].used)
                            s = (s + 1) & (ncap - 1);
                        grown[s] = table[j];
                        remap[j] = (int32_t)s;
                    }
                    for (Py_ssize_t r = 0; r < i; r++)
                        which[r] = remap[which[r]];
                    slot = (size_t)remap[slot];
                    PyMem_Free(remap);
                    PyMem_Free(table);
                    table = grown;
                    tcap = ncap;
                }
            }
            last = (int32_t)slot;
        }
        which[i] = last;
        bound += 600 + (size_t)(table[last].f[0].n + table[last].f[1].n);
    }
    Py_ssize_t nspans = 0;
    /* Phase B, without the GIL: the spans, into one buffer. */
    RELEASE_IF(n >= RELEASE_ROWS);
    long long began = now_ns();
    if (reserve(&out, bound + 1) == 0) {
        const Special *next = special;
        for (Py_ssize_t i = 0; i < n; i++) {
            const char *row = (const char *)rows.buf + i * ROW_FIELDS * 8;
            int64_t seq, parent, start, end, kts, device, device_start;
            memcpy(&seq, row + R_SEQ * 8, 8);
            memcpy(&parent, row + R_PARENT * 8, 8);
            memcpy(&start, row + R_START * 8, 8);
            memcpy(&end, row + R_END * 8, 8);
            memcpy(&kts, row + R_KTS * 8, 8);
            memcpy(&device, row + R_DEVICE * 8, 8);
            memcpy(&device_start, row + R_DEVICE_START * 8, 8);
            const Template *t = &table[which[i]];
            /* Two spans at most: each fixed part, hex-doubled, is under 1 KiB. */
            size_t need = 1024 + 2 * (size_t)(t->f[0].n + t->f[1].n + t->f[2].n + t->f[3].n +
                                              2 * gpu_clock.n);
            if (next->row == i)
                need += (size_t)(next->extra.n + next->tail.n);
            if (reserve(&out, need) < 0)
                break;
            uint64_t key = (uint64_t)kts & KEY_MASK;
            int64_t index = counters[key]++;
            char span_id[8], parent_id[8], gpu_id[8];
            uint64_t sid = base + (uint64_t)seq;
            for (int b = 0; b < 8; b++)
                span_id[b] = (char)(sid >> (56 - 8 * b));
            SpanParts s;
            memset(&s, 0, sizeof(s));
            s.trace = trace;
            s.span_id = (Frag){span_id, 8};
            if (parent != NO_PARENT) {
                uint64_t pid = base + (uint64_t)parent;
                for (int b = 0; b < 8; b++)
                    parent_id[b] = (char)(pid >> (56 - 8 * b));
                s.parent = (Frag){parent_id, 8};
            }
            else
                s.parent = run_parent;
            s.extra = (Frag){"", 0};
            s.tail = (Frag){"", 0};
            if (next->row == i) {
                if (next->has_trace)
                    s.trace = next->trace;
                if (next->has_parent)
                    s.parent = next->parent;
                s.extra = next->extra;
                s.tail = next->tail;
                next++;
            }
            int gpu = device != NO_DEVICE_TIME;
            s.head = t->f[0];
            s.attrs = t->f[1];
            s.start = (uint64_t)start + (uint64_t)offset;
            s.end = (uint64_t)end + (uint64_t)offset;
            s.nints = 2;
            s.ints[0] = index;
            s.ints[1] = (int64_t)((uint64_t)end - (uint64_t)start);
            s.ngpu = gpu;
            s.gpu = device;
            s.gpu_clock = gpu ? gpu_clock : (Frag){"", 0};
            (json ? json_span : pb_span)(&out, &s);
            ends[nspans++] = out.len;
            if (gpu) {
                uint64_t gid = sid + (1ULL << 63);
                for (int b = 0; b < 8; b++)
                    gpu_id[b] = (char)(gid >> (56 - 8 * b));
                SpanParts g;
                memset(&g, 0, sizeof(g));
                g.trace = s.trace;
                g.span_id = (Frag){gpu_id, 8};
                g.parent = (Frag){span_id, 8};
                g.head = t->f[2];
                g.attrs = t->f[3];
                g.extra = (Frag){"", 0};
                g.tail = (Frag){"", 0};
                g.start = (uint64_t)device_start + (uint64_t)offset;
                g.end = g.start + (uint64_t)device;
                g.ngpu = 1;
                g.gpu = device;
                g.gpu_clock = gpu_clock;
                (json ? json_span : pb_span)(&out, &g);
                ends[nspans++] = out.len;
            }
        }
    }
    if (saved_ != NULL)
        released_ns += now_ns() - began;
    REACQUIRE();
    if (out.failed) {
        PyErr_NoMemory();
        goto done;
    }
    /* Phase C, with the GIL: one bytes object per span. */
    result = PyList_New(nspans);
    for (Py_ssize_t i = 0; result != NULL && i < nspans; i++) {
        size_t from = i ? ends[i - 1] : 0;
        PyObject *span = PyBytes_FromStringAndSize(out.p + from, (Py_ssize_t)(ends[i] - from));
        if (span == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, span);
    }
done:
    PyMem_RawFree(out.p);
    PyMem_Free(ends);
    PyMem_Free(table);
    PyMem_Free(which);
    PyMem_Free(special);
    Py_XDECREF(keep);
    PyBuffer_Release(&counters_view);
    PyBuffer_Release(&rows);
    Py_DECREF(specials);
    return result;
}

/* The spans, held by a tuple while their bytes are copied, and their total size; NULL with an
 * error set when one is not bytes. */
static PyObject *
span_tuple(PyObject *spans_obj, int fields, size_t *total)
{
    PyObject *spans = PySequence_Tuple(spans_obj);
    if (spans == NULL)
        return NULL;
    *total = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(spans); i++) {
        PyObject *span = PyTuple_GET_ITEM(spans, i);
        if (!PyBytes_Check(span)) {
            Py_DECREF(spans);
            PyErr_SetString(PyExc_TypeError, "spans must be bytes");
            return NULL;
        }
        size_t len = (size_t)PyBytes_GET_SIZE(span);
        *total += fields ? 1 + varint_size(len) + len : len + (i > 0);
    }
    return spans;
}

static void
put_fields(Out *o, PyObject *spans)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(spans); i++) {
        PyObject *span = PyTuple_GET_ITEM(spans, i);
        size_t len = (size_t)PyBytes_GET_SIZE(span);
        put_byte(o, 0x12);
        put_varint(o, len);
        put(o, PyBytes_AS_STRING(span), len);
    }
}

static PyObject *
spanenc_span_fields(PyObject *module, PyObject *spans_obj)
{
    (void)module;
    size_t total;
    PyObject *spans = span_tuple(spans_obj, 1, &total);
    if (spans == NULL)
        return NULL;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result != NULL) {
        Out o = {PyBytes_AS_STRING(result), 0, total, 0};
        put_fields(&o, spans);
    }
    Py_DECREF(spans);
    return result;
}

static PyObject *
spanenc_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Frag resource, scope;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "request(spans, resource_field, scope_field)");
        return NULL;
    }
    if (frag_of(args[1], &resource, "resource_field") < 0 || frag_of(args[2], &scope, "scope_field") < 0)
        return NULL;
    size_t payload;
    PyObject *spans = span_tuple(args[0], 1, &payload);
    if (spans == NULL)
        return NULL;
    size_t scope_spans = (size_t)scope.n + payload;
    size_t resource_spans = (size_t)resource.n + 1 + varint_size(scope_spans) + scope_spans;
    size_t total = 1 + varint_size(resource_spans) + resource_spans;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result != NULL) {
        Out o = {PyBytes_AS_STRING(result), 0, total, 0};
        put_byte(&o, 0x0a);
        put_varint(&o, resource_spans);
        put(&o, resource.p, (size_t)resource.n);
        put_byte(&o, 0x12);
        put_varint(&o, scope_spans);
        put(&o, scope.p, (size_t)scope.n);
        /* The tuple holds every span, and bytes never change: copied without the GIL. */
        RELEASE_IF(total >= RELEASE_BYTES);
        long long began = now_ns();
        put_fields(&o, spans);
        if (saved_ != NULL)
            released_ns += now_ns() - began;
        REACQUIRE();
    }
    Py_DECREF(spans);
    return result;
}

static PyObject *
spanenc_json_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Frag prefix, suffix;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "json_line(spans, prefix, suffix)");
        return NULL;
    }
    if (frag_of(args[1], &prefix, "prefix") < 0 || frag_of(args[2], &suffix, "suffix") < 0)
        return NULL;
    size_t payload;
    PyObject *spans = span_tuple(args[0], 0, &payload);
    if (spans == NULL)
        return NULL;
    size_t total = (size_t)prefix.n + payload + (size_t)suffix.n;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result != NULL) {
        Out o = {PyBytes_AS_STRING(result), 0, total, 0};
        RELEASE_IF(total >= RELEASE_BYTES);
        long long began = now_ns();
        put(&o, prefix.p, (size_t)prefix.n);
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(spans); i++) {
            PyObject *span = PyTuple_GET_ITEM(spans, i);
            if (i)
                put_byte(&o, ',');
            put(&o, PyBytes_AS_STRING(span), (size_t)PyBytes_GET_SIZE(span));
        }
        put(&o, suffix.p, (size_t)suffix.n);
        if (saved_ != NULL)
            released_ns += now_ns() - began;
        REACQUIRE();
    }
    Py_DECREF(spans);
    return result;
}

/* -- merge ------------------------------------------------------------------------------- */

typedef struct {
    int64_t seq;
    Py_ssize_t row;
} SeqRow;

static int
compare_seq_rows(const void *a, const void *b)
{
    const SeqRow *x = a, *y = b;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

#define LOG_FIELDS 7

static PyObject *
spanenc_merge(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    /* merge(datas, device, device_offset): the columns of maeltrace.Records.merge, as bytes:
     * key, seq, parent, start, end, status, trace, device_ns, device_start, device_flags,
     * thread. */
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "merge(datas, device, device_offset)");
        return NULL;
    }
    PyObject *device = args[1];
    if (!PyDict_Check(device)) {
        PyErr_SetString(PyExc_TypeError, "device must be a dict");
        return NULL;
    }
    long long device_offset = PyLong_AsLongLong(args[2]);
    if (device_offset == -1 && PyErr_Occurred())
        return NULL;
    PyObject *datas = PySequence_Tuple(args[0]);
    if (datas == NULL)
        return NULL;
    Py_ssize_t nlogs = PyTuple_GET_SIZE(datas);
    Py_buffer *views = PyMem_Calloc((size_t)nlogs + 1, sizeof(Py_buffer));
    PyObject *columns[11] = {NULL};
    PyObject *result = NULL;
    SeqRow *order = NULL;
    const char **row_ptr = NULL;
    int64_t *thread_of = NULL;
    Py_ssize_t got = 0, n = 0;
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < nlogs; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(datas, got), &views[got], PyBUF_SIMPLE) < 0)
            goto done;
        if (views[got].len % (LOG_FIELDS * 8)) {
            got++;
            PyErr_SetString(PyExc_ValueError, "a log is not a whole number of regions");
            goto done;
        }
        n += views[got].len / (LOG_FIELDS * 8);
    }
    order = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(SeqRow));
    row_ptr = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(char *));
    thread_of = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (order == NULL || row_ptr == NULL || thread_of == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int c = 0; c < 11; c++) {
        columns[c] = PyBytes_FromStringAndSize(NULL, n * 8);
        if (columns[c] == NULL)
            goto done;
    }
    int64_t *col[11];
    for (int c = 0; c < 11; c++)
        col[c] = (int64_t *)PyBytes_AS_STRING(columns[c]);
    RELEASE_IF(n >= RELEASE_ROWS);
    long long began = now_ns();
    Py_ssize_t r = 0;
    int sorted = 1;
    int64_t previous = INT64_MIN;
    for (Py_ssize_t l = 0; l < nlogs; l++) {
        const char *data = views[l].buf;
        for (Py_ssize_t i = 0; i < views[l].len / (LOG_FIELDS * 8); i++, r++) {
            row_ptr[r] = data + i * LOG_FIELDS * 8;
            thread_of[r] = l;
            memcpy(&order[r].seq, row_ptr[r] + 8, 8);
            order[r].row = r;
            sorted = sorted && order[r].seq >= previous;
            previous = order[r].seq;
        }
    }
    /* Logs hold regions in order of their end; readers want them in order of their start. */
    if (!sorted)
        qsort(order, (size_t)n, sizeof(SeqRow), compare_seq_rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *row = row_ptr[order[i].row];
        for (int c = 0; c < LOG_FIELDS; c++)
            memcpy(&col[c][i], row + c * 8, 8);
        col[7][i] = NO_DEVICE_TIME;
        col[8][i] = NO_DEVICE_TIME;
        col[9][i] = 0;
        col[10][i] = thread_of[order[i].row];
    }
    if (saved_ != NULL)
        released_ns += now_ns() - began;
    REACQUIRE();
    if (PyDict_GET_SIZE(device)) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k = PyLong_FromLongLong(col[1][i]);
            if (k == NULL)
                goto done;
            PyObject *found = PyDict_GetItemWithError(device, k);
            Py_DECREF(k);
            if (found == NULL) {
                if (PyErr_Occurred())
                    goto done;
                continue;
            }
            long long start, duration, flags;
            if (!PyArg_ParseTuple(found, "LLL", &start, &duration, &flags))
                goto done;
            col[7][i] = duration;
            col[8][i] = (int64_t)((uint64_t)start + (uint64_t)device_offset);
            col[9][i] = flags;
        }
    }
    result = PyTuple_New(11);
    if (result != NULL) {
        for (int c = 0; c < 11; c++) {
            PyTuple_SET_ITEM(result, c, columns[c]);
            columns[c] = NULL;
        }
    }
done:
    for (int c = 0; c < 11; c++)
        Py_XDECREF(columns[c]);
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(order);
    PyMem_Free(row_ptr);
    PyMem_Free(thread_of);
    Py_DECREF(datas);
    return result;
}

static PyMethodDef methods[] = {
    {"merge", (PyCFunction)(void (*)(void))spanenc_merge, METH_FASTCALL,
     "The columns of maeltrace.Records.merge, as bytes, sorted by sequence number."},
    {"request", (PyCFunction)(void (*)(void))spanenc_request, METH_FASTCALL,
     "A serialised ExportTraceServiceRequest of one resource and one scope holding the spans."},
    {"json_line", (PyCFunction)(void (*)(void))spanenc_json_line, METH_FASTCALL,
     "prefix, the JSON spans separated by commas, suffix."},
    {"released_ns", spanenc_released_ns, METH_NOARGS,
     "Nanoseconds spent encoding with the GIL released, since the module was loaded."},
    {"span_fields", spanenc_span_fields, METH_O,
     "The spans as the spans field (2) of a ScopeSpans: each with its tag and length."},
    {"group", (PyCFunction)(void (*)(void))spanenc_group, METH_FASTCALL,
     "Packs records' columns into rows per trace ordinal (see maeltrace.otel._encode)."},
    {"sort_rows", spanenc_sort_rows, METH_O, "Packed rows in order of their sequence number."},
    {"special_rows", (PyCFunction)(void (*)(void))spanenc_special_rows, METH_FASTCALL,
     "Indices of failed rows, trace-key rows and (with roots) rows without a parent."},
    {"template_keys", spanenc_template_keys, METH_O, "The template keys of packed rows."},
    {"encode", (PyCFunction)(void (*)(void))spanenc_encode, METH_FASTCALL,
     "Serialised spans of packed rows (see maeltrace.otel._encode)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_spanenc",
    "Region rows to serialised OTLP spans, with the GIL released; twin of maeltrace.otel._encode.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__spanenc(void)
{
    return PyModule_Create(&module_def);
}
