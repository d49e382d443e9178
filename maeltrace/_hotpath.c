/* maeltrace._hotpath: the compiled recorder behind Timer.start/end and Timer.region.
 *
 * Same behaviour as maeltrace/_recorder.py (the pure-Python fallback); the test suite runs
 * against both. Each thread owns a ThreadState found through a thread-specific-storage key,
 * so recording takes no lock beyond the GIL that every call already holds. A closed region is
 * FIELDS int64 values appended to the thread's current chunk:
 *   key id, sequence number, parent's sequence number, start ns, end ns, status, trace.
 * The trace is the ordinal of the nearest enclosing region (itself included) of the trace key
 * (the epoch, by default), counted in opening order; NO_TRACE outside any.
 * Open regions live in a small array ordered by open time, which is also the parent stack.
 * A discarded (cancelled) region is nobody's parent: its children, closed or open, move to
 * its own parent (adopt_children), so no span points at one that is never exported.
 * A region opened with gpu=True also holds the handle its device clock returned on open;
 * the clock's hooks run only for such regions, so CPU-only regions never leave C.
 * Where the user traces with OpenTelemetry, a root region asks Python for the user's active
 * span only when OpenTelemetry's context variable holds one, read here without leaving C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define FIELDS 7
#define CHUNK_REGIONS 4096
#define NO_PARENT (-1)
#define NO_TRACE (-1)
#define STATUS_OK 0
#define STATUS_FAILED 1

typedef struct {
    int64_t key_id;
    int64_t seq;
    int64_t parent;
    int64_t start;
    int64_t trace;
    PyObject *device; /* device clock handle, owned; NULL for CPU-only regions */
} OpenRegion;

typedef struct {
    PyObject *info; /* (ident, native_id, name) of the thread, from thread_info() */
    OpenRegion *open;
    Py_ssize_t n_open;
    Py_ssize_t cap_open;
    int64_t **chunks;
    Py_ssize_t n_chunks;
    Py_ssize_t cap_chunks;
    Py_ssize_t fill; /* regions in the last chunk */
} ThreadState;

typedef struct {
    PyObject_HEAD
    Py_tss_t *tss;
    ThreadState **states;
    Py_ssize_t n_states;
    Py_ssize_t cap_states;
    int64_t next_seq;
    int64_t trace_key_id; /* key id that starts a trace, or -1 */
    int64_t next_trace;
    PyObject *on_trace_closed; /* callable(trace ordinal) after a trace-key region closed */
    PyObject *on_root_open;    /* callable(seq) before a region opens with none open, or NULL */
    PyObject *root_context;    /* ContextVar of OpenTelemetry's Context, or NULL: always call */
    PyObject *root_span_key;   /* the Context's key of the current span, with root_context */
    PyObject *key_ids;     /* dict: key -> int id, shared with Timer */
    PyObject *keys;        /* list: id -> key, shared with Timer */
    PyObject *register_key; /* callable(key) -> int id; validates and raises on bad keys */
    PyObject *region_error; /* exception type */
    PyObject *on_failure;  /* callable(seq, exc) */
    PyObject *thread_info; /* callable() -> (ident, native_id, name) */
    PyObject *device_open;  /* callable(key_id) -> handle, before a gpu region opens */
    PyObject *device_close; /* callable(seq, handle, status), after a gpu region closed */
    PyObject *device_block; /* callable(handle or None, value) -> value, for Region.block */
} Recorder;

typedef struct {
    PyObject_HEAD
    Recorder *recorder;
    PyObject *key;
    int64_t key_id;
    int gpu;
    PyObject *note;   /* callable((seq, items, tokens)) as the region opens, or NULL */
    int64_t items;    /* the count given to `note`, for a counted region */
    int64_t tokens;
} Region;

static PyTypeObject RecorderType;
static PyTypeObject RegionType;

static inline int64_t
now_ns(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);
    return (int64_t)t;
#else
    return (int64_t)_PyTime_GetPerfCounter();
#endif
}

/* -- thread states ------------------------------------------------------------------------ */

static void
state_free(ThreadState *st)
{
    if (st == NULL) {
        return;
    }
    for (Py_ssize_t i = 0; i < st->n_chunks; i++) {
        PyMem_RawFree(st->chunks[i]);
    }
    for (Py_ssize_t i = 0; i < st->n_open; i++) {
        Py_XDECREF(st->open[i].device);
    }
    PyMem_RawFree(st->chunks);
    PyMem_RawFree(st->open);
    Py_XDECREF(st->info);
    PyMem_RawFree(st);
}

static ThreadState *
state_new(Recorder *self)
{
    PyObject *info = PyObject_CallNoArgs(self->thread_info);
    if (info == NULL) {
        return NULL;
    }
    ThreadState *st = PyMem_RawCalloc(1, sizeof(ThreadState));
    if (st == NULL) {
        Py_DECREF(info);
        PyErr_NoMemory();
        return NULL;
    }
    st->info = info;
    if (self->n_states == self->cap_states) {
        Py_ssize_t cap = self->cap_states ? self->cap_states * 2 : 8;
        ThreadState **grown = PyMem_RawRealloc(self->states, cap * sizeof(ThreadState *));
        if (grown == NULL) {
            state_free(st);
            PyErr_NoMemory();
            return NULL;
        }
        self->states = grown;
        self->cap_states = cap;
    }
    if (PyThread_tss_set(self->tss, st) != 0) {
        state_free(st);
        PyErr_SetString(PyExc_RuntimeError, "cannot set thread-specific storage");
        return NULL;
    }
    self->states[self->n_states++] = st;
    return st;
}

static inline ThreadState *
state_get(Recorder *self)
{
    ThreadState *st = PyThread_tss_get(self->tss);
    return st != NULL ? st : state_new(self);
}

static void
state_clear_records(ThreadState *st)
{
    for (Py_ssize_t i = 0; i < st->n_chunks; i++) {
        PyMem_RawFree(st->chunks[i]);
    }
    /* The chunk table goes too: after a long run it is large, and reset() returns memory. */
    PyMem_RawFree(st->chunks);
    st->chunks = NULL;
    st->cap_chunks = 0;
    st->n_chunks = 0;
    st->fill = 0;
}

/* Hands freed heap pages back to the system. glibc keeps freed chunks of its heaps (the
 * chunks above, once its mmap threshold has grown past their size, and every arena an export
 * thread used) for reuse, so a process's RSS would stay at its high-water mark after reset().
 * Timer.reset calls it (release_free_memory) once everything it drops is freed. */
static void
release_free_memory(void)
{
#ifdef __GLIBC__
    (void)malloc_trim(0);
#endif
}

/* -- keys ----------------------------------------------------------------------------------- */

static int64_t
key_id_of(Recorder *self, PyObject *key)
{
    PyObject *id = PyDict_GetItemWithError(self->key_ids, key);
    if (id == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                return -1;
            }
            PyErr_Clear(); /* unhashable: register_key raises the clear error */
        }
        id = PyObject_CallOneArg(self->register_key, key);
        if (id == NULL) {
            return -1;
        }
        int64_t value = PyLong_AsLongLong(id);
        Py_DECREF(id);
        return value;
    }
    return PyLong_AsLongLong(id);
}

static PyObject *
key_at(Recorder *self, int64_t key_id)
{
    if (key_id >= 0 && key_id < PyList_GET_SIZE(self->keys)) {
        return PyList_GET_ITEM(self->keys, key_id);
    }
    return Py_None;
}

/* -- open and close ------------------------------------------------------------------------- */

/* Whether the root hook has anything to do: 1 when OpenTelemetry's current Context holds a
 * span (or when no context variable was given, or it holds something other than a dict, so
 * the hook decides), 0 when it holds none, -1 with an exception set. Two lookups, no call. */
static int
user_span_active(Recorder *self)
{
    if (self->root_context == NULL) {
        return 1;
    }
    PyObject *context;
    if (PyContextVar_Get(self->root_context, NULL, &context) < 0) {
        return -1;
    }
    if (context == NULL) {
        return 0; /* never set and no default: no span */
    }
    int found = 1;
    if (PyDict_Check(context)) {
        PyObject *span = PyDict_GetItemWithError(context, self->root_span_key); /* borrowed */
        found = span != NULL && span != Py_None ? 1 : (PyErr_Occurred() ? -1 : 0);
    }
    Py_DECREF(context);
    return found;
}

/* Returns the opened region's sequence number, or -1 with an exception set. */
static int64_t
open_region(Recorder *self, int64_t key_id, int gpu)
{
    ThreadState *st = state_get(self);
    if (st == NULL) {
        return -1;
    }
    for (Py_ssize_t i = st->n_open - 1; i >= 0; i--) {
        if (st->open[i].key_id == key_id) {
            PyErr_Format(self->region_error,
                         "region %R is already open on this thread; "
                         "end it before starting it again",
                         key_at(self, key_id));
            return -1;
        }
    }
    PyObject *device = NULL;
    if (gpu) {
        /* Before the clock read: a device sync or event record is not the region's work. */
        device = PyObject_CallFunction(self->device_open, "L", (long long)key_id);
        if (device == NULL) {
            return -1;
        }
    }
    if (st->n_open == st->cap_open) {
        Py_ssize_t cap = st->cap_open ? st->cap_open * 2 : 16;
        OpenRegion *grown = PyMem_RawRealloc(st->open, cap * sizeof(OpenRegion));
        if (grown == NULL) {
            Py_XDECREF(device);
            PyErr_NoMemory();
            return -1;
        }
        st->open = grown;
        st->cap_open = cap;
    }
    int64_t seq = self->next_seq++;
    if (st->n_open == 0 && self->on_root_open != NULL) {
        /* A root region: the user's own tracing may want it (set only where it is in use). */
        int wanted = user_span_active(self);
        PyObject *r = wanted > 0 ? PyObject_CallFunction(self->on_root_open, "L", (long long)seq)
                                 : NULL;
        if (wanted < 0 || (wanted > 0 && r == NULL)) {
            Py_XDECREF(device);
            return -1;
        }
        Py_XDECREF(r);
    }
    OpenRegion *slot = &st->open[st->n_open++];
    slot->device = device;
    slot->key_id = key_id;
    slot->seq = seq;
    slot->parent = st->n_open > 1 ? st->open[st->n_open - 2].seq : NO_PARENT;
    slot->trace = key_id == self->trace_key_id ? self->next_trace++
                  : st->n_open > 1            ? st->open[st->n_open - 2].trace
                                              : NO_TRACE;
    slot->start = now_ns(); /* last, so the region's own bookkeeping is outside it */
    return seq;
}

/* Returns the closed region's sequence number, or -1 with an exception set. */
static int64_t
close_region(Recorder *self, int64_t key_id, int64_t status, int64_t end)
{
    ThreadState *st = state_get(self);
    if (st == NULL) {
        return -1;
    }
    Py_ssize_t i = st->n_open - 1;
    while (i >= 0 && st->open[i].key_id != key_id) {
        i--;
    }
    if (i < 0) {
        PyErr_Format(self->region_error, "region %R was ended but is not open on this thread",
                     key_at(self, key_id));
        return -1;
    }
    if (st->n_chunks == 0 || st->fill == CHUNK_REGIONS) {
        if (st->n_chunks == st->cap_chunks) {
            Py_ssize_t cap = st->cap_chunks ? st->cap_chunks * 2 : 8;
            int64_t **grown = PyMem_RawRealloc(st->chunks, cap * sizeof(int64_t *));
            if (grown == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            st->chunks = grown;
            st->cap_chunks = cap;
        }
        int64_t *chunk = PyMem_RawMalloc(sizeof(int64_t) * FIELDS * CHUNK_REGIONS);
        if (chunk == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        st->chunks[st->n_chunks++] = chunk;
        st->fill = 0;
    }
    OpenRegion region = st->open[i];
    memmove(&st->open[i], &st->open[i + 1], (st->n_open - i - 1) * sizeof(OpenRegion));
    st->n_open--;
    int64_t *out = st->chunks[st->n_chunks - 1] + FIELDS * st->fill++;
    out[0] = region.key_id;
    out[1] = region.seq;
    out[2] = region.parent;
    out[3] = region.start;
    out[4] = end;
    out[5] = status;
    out[6] = region.trace;
    if (region.device != NULL) {
        PyObject *r = PyObject_CallFunction(self->device_close, "LOL", (long long)region.seq,
                                            region.device, (long long)status);
        Py_DECREF(region.device);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    if (key_id == self->trace_key_id && self->on_trace_closed != NULL) {
        PyObject *r = PyObject_CallFunction(self->on_trace_closed, "L", (long long)region.trace);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    return region.seq;
}

static int64_t
fail_region(Recorder *self, int64_t key_id, PyObject *exc, int64_t end)
{
    int64_t seq = close_region(self, key_id, STATUS_FAILED, end);
    if (seq < 0) {
        return -1;
    }
    PyObject *r = PyObject_CallFunction(self->on_failure, "LO", (long long)seq, exc);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return seq;
}

/* -- Recorder methods ----------------------------------------------------------------------- */

/* Parses (first, gpu=False) from a vectorcall; gpu may come by keyword. */
static int
parse_first_and_gpu(const char *name, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames, int *gpu)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *flag = NULL;
    if (nargs == 2 && nkw == 0) {
        flag = args[1];
    }
    else if (nargs == 1 && nkw == 1 &&
             PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "gpu") == 0) {
        flag = args[1];
    }
    else if (!(nargs == 1 && nkw == 0)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a key and an optional gpu flag", name);
        return -1;
    }
    *gpu = flag != NULL ? PyObject_IsTrue(flag) : 0;
    return *gpu < 0 ? -1 : 0;
}

static PyObject *
Recorder_start(Recorder *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int gpu;
    if (parse_first_and_gpu("start", args, PyVectorcall_NARGS(nargs), kwnames, &gpu) < 0) {
        return NULL;
    }
    int64_t key_id = key_id_of(self, args[0]);
    if (key_id < 0 || open_region(self, key_id, gpu) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Recorder_end(Recorder *self, PyObject *key)
{
    int64_t end = now_ns(); /* first, so the bookkeeping below is outside the region */
    int64_t key_id = key_id_of(self, key);
    if (key_id < 0 || close_region(self, key_id, STATUS_OK, end) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
parse_id(PyObject *arg, int64_t *out)
{
    *out = PyLong_AsLongLong(arg);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
Recorder_open(Recorder *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int64_t key_id;
    int gpu;
    if (parse_first_and_gpu("open", args, PyVectorcall_NARGS(nargs), kwnames, &gpu) < 0 ||
        parse_id(args[0], &key_id) < 0 || open_region(self, key_id, gpu) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Recorder_close(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t end = now_ns();
    int64_t key_id, status;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "close(key_id, status)");
        return NULL;
    }
    if (parse_id(args[0], &key_id) < 0 || parse_id(args[1], &status) < 0) {
        return NULL;
    }
    int64_t seq = close_region(self, key_id, status, end);
    return seq < 0 ? NULL : PyLong_FromLongLong(seq);
}

static PyObject *
Recorder_fail(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t end = now_ns();
    int64_t key_id;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fail(key_id, exc)");
        return NULL;
    }
    if (parse_id(args[0], &key_id) < 0) {
        return NULL;
    }
    int64_t seq = fail_region(self, key_id, args[1], end);
    return seq < 0 ? NULL : PyLong_FromLongLong(seq);
}

/* The trace ordinal of region `parent`: open, or closed after `start` (it was open then). */
static int64_t
parent_trace(ThreadState *st, int64_t parent, int64_t start)
{
    if (parent == NO_PARENT) {
        return NO_TRACE;
    }
    for (Py_ssize_t i = 0; i < st->n_open; i++) {
        if (st->open[i].seq == parent) {
            return st->open[i].trace;
        }
    }
    for (Py_ssize_t c = st->n_chunks - 1; c >= 0; c--) {
        Py_ssize_t n = c == st->n_chunks - 1 ? st->fill : CHUNK_REGIONS;
        for (Py_ssize_t j = n - 1; j >= 0; j--) {
            const int64_t *r = st->chunks[c] + j * FIELDS;
            if (r[1] == parent) {
                return r[6];
            }
            if (r[4] < start) {
                return NO_TRACE;
            }
        }
    }
    return NO_TRACE;
}

/* Moves the children of `gone` (just taken off the stack at index `from`) to its parent:
 * the open ones above it, and the closed ones, which were recorded after it opened and so
 * sit at the end of the log. Ends are read at close, in order, so the first record that ended
 * before `gone` started stops the walk (at once, for a region without children). A trace-key
 * region's descendants carry its ordinal; they join its parent's trace. */
static void
adopt_children(Recorder *self, ThreadState *st, const OpenRegion *gone, Py_ssize_t from)
{
    int64_t trace = gone->trace;
    int64_t moved = gone->key_id == self->trace_key_id
                        ? parent_trace(st, gone->parent, gone->start)
                        : trace;
    for (Py_ssize_t i = from; i < st->n_open; i++) {
        OpenRegion *r = &st->open[i];
        if (r->parent == gone->seq) {
            r->parent = gone->parent;
        }
        if (r->trace == trace) {
            r->trace = moved;
        }
    }
    for (Py_ssize_t c = st->n_chunks - 1; c >= 0; c--) {
        Py_ssize_t n = c == st->n_chunks - 1 ? st->fill : CHUNK_REGIONS;
        for (Py_ssize_t j = n - 1; j >= 0; j--) {
            int64_t *r = st->chunks[c] + j * FIELDS;
            if (r[4] < gone->start) {
                return;
            }
            if (r[2] == gone->seq) {
                r[2] = gone->parent;
            }
            if (r[6] == trace) {
                r[6] = moved;
            }
        }
    }
}

static PyObject *
Recorder_discard(Recorder *self, PyObject *arg)
{
    int64_t key_id;
    if (parse_id(arg, &key_id) < 0) {
        return NULL;
    }
    ThreadState *st = state_get(self);
    if (st == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = st->n_open - 1; i >= 0; i--) {
        if (st->open[i].key_id == key_id) {
            OpenRegion gone = st->open[i];
            memmove(&st->open[i], &st->open[i + 1], (st->n_open - i - 1) * sizeof(OpenRegion));
            st->n_open--;
            adopt_children(self, st, &gone, i);
            Py_XDECREF(gone.device);
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(self->region_error, "region %R is not open on this thread",
                 key_at(self, key_id));
    return NULL;
}

static PyObject *
Recorder_set_trace_key(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t key_id;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_trace_key(key_id, on_trace_closed)");
        return NULL;
    }
    if (parse_id(args[0], &key_id) < 0) {
        return NULL;
    }
    self->trace_key_id = key_id;
    Py_XSETREF(self->on_trace_closed, args[1] == Py_None ? NULL : Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyObject *
Recorder_set_root_hook(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* set_root_hook(hook, context_var=None, span_key=None) */
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "set_root_hook(hook, context_var=None, span_key=None)");
        return NULL;
    }
    PyObject *hook = args[0];
    PyObject *var = nargs > 1 ? args[1] : Py_None;
    PyObject *key = nargs > 2 ? args[2] : Py_None;
    if (var != Py_None && (!PyContextVar_CheckExact(var) || !PyUnicode_CheckExact(key))) {
        PyErr_SetString(PyExc_TypeError,
                        "set_root_hook: context_var must be a ContextVar and span_key a str");
        return NULL;
    }
    Py_XSETREF(self->on_root_open, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_XSETREF(self->root_context, var == Py_None ? NULL : Py_NewRef(var));
    Py_XSETREF(self->root_span_key, var == Py_None ? NULL : Py_NewRef(key));
    Py_RETURN_NONE;
}

/* This thread's open region of key_id, or NULL (also where the thread recorded nothing). */
static const OpenRegion *
find_open(Recorder *self, int64_t key_id)
{
    ThreadState *st = PyThread_tss_get(self->tss);
    for (Py_ssize_t i = st != NULL ? st->n_open - 1 : -1; i >= 0; i--) {
        if (st->open[i].key_id == key_id) {
            return &st->open[i];
        }
    }
    return NULL;
}

static PyObject *
Recorder_is_open(Recorder *self, PyObject *arg)
{
    int64_t key_id;
    if (parse_id(arg, &key_id) < 0) {
        return NULL;
    }
    return PyBool_FromLong(find_open(self, key_id) != NULL);
}

static PyObject *
Recorder_open_seq(Recorder *self, PyObject *arg)
{
    int64_t key_id;
    if (parse_id(arg, &key_id) < 0) {
        return NULL;
    }
    const OpenRegion *found = find_open(self, key_id);
    return PyLong_FromLongLong(found != NULL ? found->seq : -1);
}

static PyObject *
Recorder_region(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t key_id;
    int gpu = 0;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "region(key, key_id, gpu=False)");
        return NULL;
    }
    if (parse_id(args[1], &key_id) < 0 || (nargs == 3 && (gpu = PyObject_IsTrue(args[2])) < 0)) {
        return NULL;
    }
    Region *region = PyObject_GC_New(Region, &RegionType);
    if (region == NULL) {
        return NULL;
    }
    region->recorder = (Recorder *)Py_NewRef(self);
    region->key = Py_NewRef(args[0]);
    region->key_id = key_id;
    region->gpu = gpu;
    region->note = NULL;
    region->items = 0;
    region->tokens = 0;
    PyObject_GC_Track(region);
    return (PyObject *)region;
}

static PyObject *
Recorder_snapshot(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* snapshot(since=None): since[i] regions of thread state i are skipped (already read). */
    PyObject *since = nargs > 0 ? args[0] : Py_None;
    if (nargs > 1 || (since != Py_None && !PyList_Check(since))) {
        PyErr_SetString(PyExc_TypeError, "snapshot(since: list[int] | None = None)");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        ThreadState *st = self->states[s];
        Py_ssize_t regions = st->n_chunks ? (st->n_chunks - 1) * CHUNK_REGIONS + st->fill : 0;
        Py_ssize_t skip = 0;
        if (since != Py_None && s < PyList_GET_SIZE(since)) {
            skip = PyLong_AsSsize_t(PyList_GET_ITEM(since, s));
            if (skip == -1 && PyErr_Occurred()) {
                Py_DECREF(out);
                return NULL;
            }
            skip = skip < 0 ? 0 : (skip > regions ? regions : skip);
        }
        PyObject *data =
            PyBytes_FromStringAndSize(NULL, (regions - skip) * FIELDS * sizeof(int64_t));
        if (data == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        char *dst = PyBytes_AS_STRING(data);
        for (Py_ssize_t c = skip / CHUNK_REGIONS; c < st->n_chunks; c++) {
            Py_ssize_t first = c == skip / CHUNK_REGIONS ? skip % CHUNK_REGIONS : 0;
            Py_ssize_t n = (c == st->n_chunks - 1) ? st->fill : CHUNK_REGIONS;
            if (n <= first) {
                continue;
            }
            size_t size = (size_t)(n - first) * FIELDS * sizeof(int64_t);
            memcpy(dst, st->chunks[c] + first * FIELDS, size);
            dst += size;
        }
        PyObject *item = PyTuple_Pack(2, st->info, data);
        Py_DECREF(data);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

/* -- reading one key ------------------------------------------------------------------------ */

static PyObject *array_type; /* array.array, imported on first use */

/* A new array('q') of n zeros, to be filled through its buffer. */
static PyObject *
new_int64_array(Py_ssize_t n)
{
    if (array_type == NULL) {
        PyObject *module = PyImport_ImportModule("array");
        if (module == NULL) {
            return NULL;
        }
        array_type = PyObject_GetAttrString(module, "array");
        Py_DECREF(module);
        if (array_type == NULL) {
            return NULL;
        }
    }
    PyObject *one = PyObject_CallFunction(array_type, "s(i)", "q", 0);
    if (one == NULL) {
        return NULL;
    }
    PyObject *out = PySequence_Repeat(one, n);
    Py_DECREF(one);
    return out;
}

typedef struct {
    int64_t seq;
    int64_t value;
} SeqValue;

static int
compare_seq(const void *a, const void *b)
{
    int64_t x = ((const SeqValue *)a)->seq, y = ((const SeqValue *)b)->seq;
    return (x > y) - (x < y);
}

static PyObject *
Recorder_key_durations(Recorder *self, PyObject *arg)
{
    /* key_durations(key_id) -> (seqs, durations): the key's completed regions (status OK), as
     * two array('q'), in start order; straight from the logs, no other column is copied. */
    int64_t key_id;
    if (parse_id(arg, &key_id) < 0) {
        return NULL;
    }
    Py_ssize_t n = 0;
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        ThreadState *st = self->states[s];
        for (Py_ssize_t c = 0; c < st->n_chunks; c++) {
            const int64_t *v = st->chunks[c];
            Py_ssize_t rows = c == st->n_chunks - 1 ? st->fill : CHUNK_REGIONS;
            for (Py_ssize_t r = 0; r < rows; r++, v += FIELDS) {
                n += v[0] == key_id && v[5] == STATUS_OK;
            }
        }
    }
    PyObject *seqs = new_int64_array(n);
    PyObject *durations = seqs != NULL ? new_int64_array(n) : NULL;
    Py_buffer sb = {0}, db = {0};
    if (durations == NULL || PyObject_GetBuffer(seqs, &sb, PyBUF_WRITABLE) < 0) {
        Py_XDECREF(seqs);
        Py_XDECREF(durations);
        return NULL;
    }
    if (PyObject_GetBuffer(durations, &db, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&sb);
        Py_DECREF(seqs);
        Py_DECREF(durations);
        return NULL;
    }
    int64_t *seq_out = sb.buf, *dur_out = db.buf;
    Py_ssize_t i = 0;
    int ordered = 1;
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        ThreadState *st = self->states[s];
        for (Py_ssize_t c = 0; c < st->n_chunks; c++) {
            const int64_t *v = st->chunks[c];
            Py_ssize_t rows = c == st->n_chunks - 1 ? st->fill : CHUNK_REGIONS;
            for (Py_ssize_t r = 0; r < rows && i < n; r++, v += FIELDS) {
                if (v[0] == key_id && v[5] == STATUS_OK) {
                    /* A thread closes one key's regions in start order (they cannot overlap
                     * on it); only several threads' runs need sorting. */
                    ordered &= i == 0 || seq_out[i - 1] < v[1];
                    seq_out[i] = v[1];
                    dur_out[i] = v[4] - v[3];
                    i++;
                }
            }
        }
    }
    int failed = 0;
    if (!ordered) {
        SeqValue *pairs = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(SeqValue));
        if (pairs == NULL) {
            PyErr_NoMemory();
            failed = 1;
        }
        else {
            for (Py_ssize_t k = 0; k < n; k++) {
                pairs[k].seq = seq_out[k];
                pairs[k].value = dur_out[k];
            }
            Py_BEGIN_ALLOW_THREADS
            qsort(pairs, (size_t)n, sizeof(SeqValue), compare_seq);
            Py_END_ALLOW_THREADS
            for (Py_ssize_t k = 0; k < n; k++) {
                seq_out[k] = pairs[k].seq;
                dur_out[k] = pairs[k].value;
            }
            PyMem_RawFree(pairs);
        }
    }
    PyBuffer_Release(&sb);
    PyBuffer_Release(&db);
    if (failed) {
        Py_DECREF(seqs);
        Py_DECREF(durations);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, seqs, durations);
    Py_DECREF(seqs);
    Py_DECREF(durations);
    return out;
}

static PyObject *
Recorder_clear_records(Recorder *self, PyObject *Py_UNUSED(ignored))
{
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        state_clear_records(self->states[s]);
    }
    Py_RETURN_NONE;
}

static PyObject *
Recorder_after_fork(Recorder *self, PyObject *Py_UNUSED(ignored))
{
    /* In the child only this thread exists: keep its state, emptied, and drop the others'. */
    ThreadState *mine = PyThread_tss_get(self->tss);
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        if (self->states[s] != mine) {
            state_free(self->states[s]);
        }
    }
    self->n_states = 0;
    if (mine != NULL) {
        state_clear_records(mine);
        for (Py_ssize_t i = 0; i < mine->n_open; i++) {
            Py_XDECREF(mine->open[i].device);
        }
        mine->n_open = 0;
        PyObject *info = PyObject_CallNoArgs(self->thread_info);
        if (info == NULL) {
            return NULL;
        }
        Py_SETREF(mine->info, info);
        self->states[self->n_states++] = mine;
    }
    Py_RETURN_NONE;
}

static PyObject *
Recorder_nbytes(Recorder *self, PyObject *Py_UNUSED(ignored))
{
    size_t total = self->cap_states * sizeof(ThreadState *);
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        ThreadState *st = self->states[s];
        total += sizeof(ThreadState) + st->cap_open * sizeof(OpenRegion) +
                 st->cap_chunks * sizeof(int64_t *) +
                 (size_t)st->n_chunks * FIELDS * CHUNK_REGIONS * sizeof(int64_t);
    }
    return PyLong_FromSize_t(total);
}

static PyObject *
Recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key_ids",     "keys",         "register_key",
                             "region_error", "on_failure",  "thread_info",
                             "device_open", "device_close", "device_block", NULL};
    PyObject *key_ids, *keys, *register_key, *region_error, *on_failure, *thread_info;
    PyObject *device_open, *device_close, *device_block;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOOOOOO", kwlist, &PyDict_Type, &key_ids,
                                     &PyList_Type, &keys, &register_key, &region_error,
                                     &on_failure, &thread_info, &device_open, &device_close,
                                     &device_block)) {
        return NULL;
    }
    Recorder *self = (Recorder *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->tss = PyThread_tss_alloc();
    if (self->tss == NULL || PyThread_tss_create(self->tss) != 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_RuntimeError, "no thread-specific storage key left");
        return NULL;
    }
    self->trace_key_id = -1;
    self->key_ids = Py_NewRef(key_ids);
    self->keys = Py_NewRef(keys);
    self->register_key = Py_NewRef(register_key);
    self->region_error = Py_NewRef(region_error);
    self->on_failure = Py_NewRef(on_failure);
    self->thread_info = Py_NewRef(thread_info);
    self->device_open = Py_NewRef(device_open);
    self->device_close = Py_NewRef(device_close);
    self->device_block = Py_NewRef(device_block);
    return (PyObject *)self;
}

static int
Recorder_traverse(Recorder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->key_ids);
    Py_VISIT(self->keys);
    Py_VISIT(self->register_key);
    Py_VISIT(self->region_error);
    Py_VISIT(self->on_failure);
    Py_VISIT(self->thread_info);
    Py_VISIT(self->device_open);
    Py_VISIT(self->device_close);
    Py_VISIT(self->device_block);
    Py_VISIT(self->on_trace_closed);
    Py_VISIT(self->on_root_open);
    Py_VISIT(self->root_context);
    Py_VISIT(self->root_span_key);
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        ThreadState *st = self->states[s];
        Py_VISIT(st->info);
        for (Py_ssize_t i = 0; i < st->n_open; i++) {
            Py_VISIT(st->open[i].device);
        }
    }
    return 0;
}

static int
Recorder_clear(Recorder *self)
{
    Py_CLEAR(self->key_ids);
    Py_CLEAR(self->keys);
    Py_CLEAR(self->register_key);
    Py_CLEAR(self->region_error);
    Py_CLEAR(self->on_failure);
    Py_CLEAR(self->thread_info);
    Py_CLEAR(self->device_open);
    Py_CLEAR(self->device_close);
    Py_CLEAR(self->device_block);
    Py_CLEAR(self->on_trace_closed);
    Py_CLEAR(self->on_root_open);
    Py_CLEAR(self->root_context);
    Py_CLEAR(self->root_span_key);
    return 0;
}

static void
Recorder_dealloc(Recorder *self)
{
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    for (Py_ssize_t s = 0; s < self->n_states; s++) {
        state_free(self->states[s]);
    }
    PyMem_RawFree(self->states);
    if (self->tss != NULL) {
        /* Other threads may still hold this key's value; it is never read again. */
        PyThread_tss_delete(self->tss);
        PyThread_tss_free(self->tss);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Recorder_methods[] = {
    {"start", (PyCFunction)(void (*)(void))Recorder_start, METH_FASTCALL | METH_KEYWORDS,
     "Open a region of key on this thread; gpu=True adds a device measurement."},
    {"end", (PyCFunction)Recorder_end, METH_O, "Close this thread's region of key."},
    {"open", (PyCFunction)(void (*)(void))Recorder_open, METH_FASTCALL | METH_KEYWORDS,
     "Open a region by key id; gpu=True adds a device measurement."},
    {"close", (PyCFunction)(void (*)(void))Recorder_close, METH_FASTCALL,
     "Close a region by key id with a status; returns its sequence number."},
    {"fail", (PyCFunction)(void (*)(void))Recorder_fail, METH_FASTCALL,
     "Close a region by key id as failed, reporting the exception."},
    {"discard", (PyCFunction)Recorder_discard, METH_O, "Forget an open region unrecorded."},
    {"is_open", (PyCFunction)Recorder_is_open, METH_O, "Whether a key id is open here."},
    {"open_seq", (PyCFunction)Recorder_open_seq, METH_O,
     "The sequence number of this thread's open region of a key id, or -1."},
    {"set_root_hook", (PyCFunction)(void (*)(void))Recorder_set_root_hook, METH_FASTCALL,
     "A callable(seq) called before each root region opens (None: no call); with a ContextVar "
     "of dicts and a key, only while the variable's dict holds a value under the key."},
    {"set_trace_key", (PyCFunction)(void (*)(void))Recorder_set_trace_key, METH_FASTCALL,
     "The key id whose regions start a trace, and a callable(ordinal) for when one closes."},
    {"region", (PyCFunction)(void (*)(void))Recorder_region, METH_FASTCALL,
     "A reusable context manager timing its body under key."},
    {"snapshot", (PyCFunction)(void (*)(void))Recorder_snapshot, METH_FASTCALL,
     "[(thread info, bytes of int64 records)] per thread, after since[i] regions of each."},
    {"clear_records", (PyCFunction)Recorder_clear_records, METH_NOARGS,
     "Drop recorded regions; open ones stay open."},
    {"after_fork", (PyCFunction)Recorder_after_fork, METH_NOARGS,
     "In a forked child: keep only this thread, emptied."},
    {"nbytes", (PyCFunction)Recorder_nbytes, METH_NOARGS, "Bytes held by the store."},
    {"key_durations", (PyCFunction)Recorder_key_durations, METH_O,
     "(seqs, durations): array('q') of a key id's completed regions, in start order."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "maeltrace._hotpath.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Compiled per-thread region recorder.",
    .tp_new = Recorder_new,
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_traverse = (traverseproc)Recorder_traverse,
    .tp_clear = (inquiry)Recorder_clear,
    .tp_methods = Recorder_methods,
};

/* -- Region --------------------------------------------------------------------------------- */

static PyObject *
Region_enter(Region *self, PyObject *Py_UNUSED(ignored))
{
    int64_t seq = open_region(self->recorder, self->key_id, self->gpu);
    if (seq < 0) {
        return NULL;
    }
    if (self->note != NULL) {
        /* After the start: the note is the region's bookkeeping, inside it, as little as a
           tuple and a call. A failure (memory) loses the count, never the region. */
        PyObject *triple = Py_BuildValue("(LLL)", (long long)seq, (long long)self->items,
                                         (long long)self->tokens);
        PyObject *r = triple != NULL ? PyObject_CallOneArg(self->note, triple) : NULL;
        Py_XDECREF(triple);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    return Py_NewRef(self);
}

static PyObject *
Region_counted(Region *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* counted(items, tokens, note): this region, noting (seq, items, tokens) as it opens. */
    int64_t items, tokens;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "counted(items, tokens, note)");
        return NULL;
    }
    if (parse_id(args[0], &items) < 0 || parse_id(args[1], &tokens) < 0) {
        return NULL;
    }
    Region *region = PyObject_GC_New(Region, &RegionType);
    if (region == NULL) {
        return NULL;
    }
    region->recorder = (Recorder *)Py_NewRef(self->recorder);
    region->key = Py_NewRef(self->key);
    region->key_id = self->key_id;
    region->gpu = self->gpu;
    region->note = Py_NewRef(args[2]);
    region->items = items;
    region->tokens = tokens;
    PyObject_GC_Track(region);
    return (PyObject *)region;
}

static PyObject *
Region_block(Region *self, PyObject *value)
{
    Recorder *rec = self->recorder;
    ThreadState *st = state_get(rec);
    if (st == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = st->n_open - 1; i >= 0; i--) {
        if (st->open[i].key_id == self->key_id) {
            PyObject *device = st->open[i].device ? st->open[i].device : Py_None;
            return PyObject_CallFunctionObjArgs(rec->device_block, device, value, NULL);
        }
    }
    PyErr_Format(rec->region_error, "region %R is not open on this thread", self->key);
    return NULL;
}

static PyObject *
Region_exit(Region *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t end = now_ns();
    if (nargs < 1 || args[0] == Py_None) {
        if (close_region(self->recorder, self->key_id, STATUS_OK, end) < 0) {
            return NULL;
        }
    }
    else if (fail_region(self->recorder, self->key_id, nargs > 1 ? args[1] : Py_None, end) <
             0) {
        return NULL;
    }
    Py_RETURN_NONE; /* never swallows the body's exception */
}

static PyObject *
Region_repr(Region *self)
{
    return PyUnicode_FromFormat("Region(%R)", self->key);
}

static int
Region_traverse(Region *self, visitproc visit, void *arg)
{
    Py_VISIT(self->recorder);
    Py_VISIT(self->key);
    Py_VISIT(self->note);
    return 0;
}

static int
Region_clear(Region *self)
{
    Py_CLEAR(self->recorder);
    Py_CLEAR(self->key);
    Py_CLEAR(self->note);
    return 0;
}

static void
Region_dealloc(Region *self)
{
    PyObject_GC_UnTrack(self);
    Region_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
Region_get_key(Region *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->key);
}

static PyObject *
Region_get_gpu(Region *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->gpu);
}

static PyGetSetDef Region_getset[] = {
    {"key", (getter)Region_get_key, NULL, "The region key.", NULL},
    {"gpu", (getter)Region_get_gpu, NULL, "Whether the region is measured on the device.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Region_methods[] = {
    {"__enter__", (PyCFunction)Region_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Region_exit, METH_FASTCALL, NULL},
    {"block", (PyCFunction)Region_block, METH_O,
     "Wait until value (the region's outputs) is computed; returns value."},
    {"counted", (PyCFunction)(void (*)(void))Region_counted, METH_FASTCALL,
     "This region with a count: note((seq, items, tokens)) is called as it opens."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "maeltrace._hotpath.Region",
    .tp_basicsize = sizeof(Region),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Context manager timing its body under one key; reusable, shared by threads.",
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_traverse = (traverseproc)Region_traverse,
    .tp_clear = (inquiry)Region_clear,
    .tp_repr = (reprfunc)Region_repr,
    .tp_methods = Region_methods,
    .tp_getset = Region_getset,
};

/* -- int64 buffers, for the statistics -------------------------------------------------------- */

/* A C-contiguous buffer of int64 (an array('q'), or a memoryview of one), writable if asked. */
static int
get_int64_buffer(PyObject *obj, Py_buffer *view, int writable)
{
    int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        return -1;
    }
    const char *format = view->format != NULL ? view->format : "B";
    if (view->itemsize != 8 || (strcmp(format, "q") != 0 && strcmp(format, "l") != 0)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "expected a buffer of int64 (array('q'))");
        return -1;
    }
    return 0;
}

/* LSD radix sort of n int64 values, 8 bits a pass, skipping the passes whose byte is the same
 * in every value (most of them, for durations). tmp holds n values. */
static void
radix_sort_int64(int64_t *values, int64_t *tmp, Py_ssize_t n)
{
    static const uint64_t SIGN = (uint64_t)1 << 63;
    size_t counts[8][256];
    memset(counts, 0, sizeof(counts));
    uint64_t *a = (uint64_t *)values, *b = (uint64_t *)tmp;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t u = a[i] ^ SIGN; /* signed order as unsigned order */
        for (int d = 0; d < 8; d++) {
            counts[d][(u >> (8 * d)) & 0xFF]++;
        }
    }
    for (int d = 0; d < 8; d++) {
        size_t *count = counts[d];
        int trivial = 0;
        for (int k = 0; k < 256; k++) {
            if (count[k] == (size_t)n) {
                trivial = 1;
                break;
            }
        }
        if (trivial) {
            continue;
        }
        size_t offset = 0;
        for (int k = 0; k < 256; k++) {
            size_t c = count[k];
            count[k] = offset;
            offset += c;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            b[count[((a[i] ^ SIGN) >> (8 * d)) & 0xFF]++] = a[i];
        }
        uint64_t *swap = a;
        a = b;
        b = swap;
    }
    if (a != (uint64_t *)values) {
        memcpy(values, a, (size_t)n * sizeof(int64_t));
    }
}

static PyObject *
hotpath_sort_int64(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    if (get_int64_buffer(arg, &view, 1) < 0) {
        return NULL;
    }
    Py_ssize_t n = view.len / 8;
    int64_t *tmp = n > 1 ? PyMem_RawMalloc((size_t)n * sizeof(int64_t)) : NULL;
    if (n > 1 && tmp == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    if (n > 1) {
        Py_BEGIN_ALLOW_THREADS
        radix_sort_int64(view.buf, tmp, n);
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(tmp);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

#ifdef __SIZEOF_INT128__
/* A signed 128-bit value as a Python int. */
static PyObject *
int128_to_long(__int128 value)
{
    int negative = value < 0;
    unsigned __int128 magnitude = negative ? -(unsigned __int128)value : (unsigned __int128)value;
    PyObject *high = PyLong_FromUnsignedLongLong((unsigned long long)(magnitude >> 64));
    PyObject *low = PyLong_FromUnsignedLongLong((unsigned long long)magnitude);
    PyObject *shift = PyLong_FromLong(64);
    PyObject *shifted = high && shift ? PyNumber_Lshift(high, shift) : NULL;
    PyObject *out = shifted && low ? PyNumber_Or(shifted, low) : NULL;
    Py_XDECREF(high);
    Py_XDECREF(low);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    if (out != NULL && negative) {
        Py_SETREF(out, PyNumber_Negative(out));
    }
    return out;
}
#endif

static PyObject *
hotpath_sums_int64(PyObject *Py_UNUSED(module), PyObject *arg)
{
    /* (sum, sum of squares) of int64 values, exactly; None where 128 bits might not hold them
     * (the caller then sums in Python). */
    Py_buffer view;
    if (get_int64_buffer(arg, &view, 0) < 0) {
        return NULL;
    }
#ifdef __SIZEOF_INT128__
    const int64_t *v = view.buf;
    Py_ssize_t n = view.len / 8;
    __int128 total = 0;
    unsigned __int128 squares = 0;
    int overflow = 0;
    /* Each square is at most 2**126, so while the sum of squares stays below 2**127 the next
     * add cannot wrap 128 bits; the sum itself stays below 2**63 * n. */
    static const unsigned __int128 LIMIT = (unsigned __int128)1 << 127;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        __int128 x = v[i];
        total += x;
        squares += (unsigned __int128)(x * x);
        if (squares >= LIMIT) {
            overflow = 1;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (overflow) {
        Py_RETURN_NONE;
    }
    PyObject *s = int128_to_long(total);
    PyObject *q = s != NULL ? int128_to_long((__int128)squares) : NULL;
    PyObject *out = q != NULL ? PyTuple_Pack(2, s, q) : NULL;
    Py_XDECREF(s);
    Py_XDECREF(q);
    return out;
#else
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
#endif
}

static PyObject *
hotpath_release_free_memory(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    release_free_memory();
    Py_RETURN_NONE;
}

static PyMethodDef hotpath_functions[] = {
    {"sort_int64", (PyCFunction)hotpath_sort_int64, METH_O,
     "Sorts a buffer of int64 (an array('q')) in place, ascending."},
    {"sums_int64", (PyCFunction)hotpath_sums_int64, METH_O,
     "(sum, sum of squares) of a buffer of int64, exact; None if they might not fit 128 bits."},
    {"release_free_memory", (PyCFunction)hotpath_release_free_memory, METH_NOARGS,
     "Hands the C heap's free pages back to the system (malloc_trim on glibc)."},
    {NULL, NULL, 0, NULL},
};

/* -- module --------------------------------------------------------------------------------- */

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "maeltrace._hotpath",
    .m_doc = "Compiled hot path of maeltrace's recorder.",
    .m_size = -1,
    .m_methods = hotpath_functions,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    if (PyType_Ready(&RecorderType) < 0 || PyType_Ready(&RegionType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&hotpath_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Recorder", (PyObject *)&RecorderType) < 0 ||
        PyModule_AddObjectRef(m, "Region", (PyObject *)&RegionType) < 0 ||
        PyModule_AddIntConstant(m, "FIELDS", FIELDS) < 0 ||
        PyModule_AddIntConstant(m, "CHUNK_REGIONS", CHUNK_REGIONS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
