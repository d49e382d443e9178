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
 * A region opened with gpu=True also holds the handle its device clock returned on open;
 * the clock's hooks run only for such regions, so CPU-only regions never leave C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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
    st->n_chunks = 0;
    st->fill = 0;
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

static int
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
        PyObject *r = PyObject_CallFunction(self->on_root_open, "L", (long long)seq);
        if (r == NULL) {
            Py_XDECREF(device);
            return -1;
        }
        Py_DECREF(r);
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
    return 0;
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
            PyObject *device = st->open[i].device;
            memmove(&st->open[i], &st->open[i + 1], (st->n_open - i - 1) * sizeof(OpenRegion));
            st->n_open--;
            Py_XDECREF(device);
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
Recorder_set_root_hook(Recorder *self, PyObject *hook)
{
    Py_XSETREF(self->on_root_open, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_RETURN_NONE;
}

static PyObject *
Recorder_is_open(Recorder *self, PyObject *arg)
{
    int64_t key_id;
    if (parse_id(arg, &key_id) < 0) {
        return NULL;
    }
    ThreadState *st = PyThread_tss_get(self->tss);
    for (Py_ssize_t i = st != NULL ? st->n_open - 1 : -1; i >= 0; i--) {
        if (st->open[i].key_id == key_id) {
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
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
    {"set_root_hook", (PyCFunction)Recorder_set_root_hook, METH_O,
     "A callable(seq) called before each root region opens (None: no call)."},
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
    if (open_region(self->recorder, self->key_id, self->gpu) < 0) {
        return NULL;
    }
    return Py_NewRef(self);
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
    return 0;
}

static int
Region_clear(Region *self)
{
    Py_CLEAR(self->recorder);
    Py_CLEAR(self->key);
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

/* -- module --------------------------------------------------------------------------------- */

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "maeltrace._hotpath",
    .m_doc = "Compiled hot path of maeltrace's recorder.",
    .m_size = -1,
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
