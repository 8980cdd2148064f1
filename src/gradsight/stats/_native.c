/* The raw sums of many gradients in one pass over each (gs_raw_sums); below, the sums of
 * Adam's state that the monitor reads at the steps that measure update_ratio (gs_adam_sums)
 * and the exponent-field counts the log2 histograms are made of (gs_exponent_counts).
 * gradsight.stats.native builds this
 * file with the machine's C compiler (no PyTorch headers: it compiles in well under a second)
 * and calls gs_raw_sums through ctypes, once per recorded step for all the tensors it takes.
 *
 * Per tensor t (a gradient g and, optionally, its weight w of the same shape and dtype, both
 * dense, each row one block of memory), out[t * GS_FIELDS + k] receives:
 *   0 sumsq    sum of g*g        1 sumabs  sum of |g|        2 maxabs   max |g| (NaN if g has a NaN)
 *   3 zeros    count of g == 0   4 dead    rows whose every element is 0 (tensors with rows)
 *   5 w_sumsq  sum of w*w (0 without weights)
 * A tensor with rows (rows > 0) is read row by row; one without (rows == 0, a 1-d tensor) as
 * parts of at most GS_PART elements. Squares and absolute values are added in float32 vector
 * lanes (float64 for float64 tensors) over at most GS_PART elements at a time, the parts' sums
 * in double; zeros are counted in integer lanes. A NaN makes a part's sum of squares NaN, which
 * is how the maxima (whose comparisons skip NaN) learn of it.
 *
 * The work is split across `threads` threads by elements, at row and part boundaries; each
 * thread adds into its own copy of out, and the copies are merged at the end. Built with
 * OpenMP (-fopenmp, linked against the OpenMP runtime PyTorch loaded), the threads are
 * PyTorch's own: right after a backward pass they are awake and spinning, and a thread of
 * ours would compete with them for the cores. Otherwise they are POSIX threads. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
int omp_get_thread_num(void);  /* (declared here: omp.h is not installed with every compiler) */
int omp_get_num_threads(void);
#endif

/* 1 where the threads are OpenMP's (see above), 0 where they are POSIX threads. */
int gs_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define GS_FIELDS 6
#define GS_PART 4096
#define GS_LANES 16

enum { GS_F32 = 0, GS_F64 = 1, GS_BF16 = 2, GS_F16 = 3 };

typedef float vf __attribute__((vector_size(GS_LANES * 4)));
typedef int32_t vi __attribute__((vector_size(GS_LANES * 4)));
typedef uint32_t vu __attribute__((vector_size(GS_LANES * 4)));
typedef uint16_t vh __attribute__((vector_size(GS_LANES * 2)));
typedef double vd __attribute__((vector_size(GS_LANES * 4)));
typedef int64_t vl __attribute__((vector_size(GS_LANES * 4)));

#define VD_LANES (GS_LANES / 2)

/* The sums of one part of a tensor: n elements of g (and of w) from element `first`. */
typedef struct {
    double sumsq, sumabs, zeros, w_sumsq;
    float max;  /* max |g| over the part, NaN-blind */
} part_sums;

static inline vf load_f32(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }

static inline vf load_bf16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    vu u = __builtin_convertvector(h, vu) << 16;
    return (vf)u;
}

static inline vf abs_f(vf v) { return (vf)((vi)v & 0x7fffffff); }
static inline vf max_f(vf a, vf b) { vi gt = a > b; return (vf)(((vi)a & gt) | ((vi)b & ~gt)); }

static float hsum_f(vf v) { float s = 0; for (int k = 0; k < GS_LANES; k++) s += v[k]; return s; }
static float hmax_f(vf v) { float s = 0; for (int k = 0; k < GS_LANES; k++) s = v[k] > s ? v[k] : s; return s; }

/* float16 to float32, exactly: normal numbers by moving the exponent and mantissa bits,
 * subnormal ones as mantissa x 2^-24 (a normal float32), infinities and NaNs kept. */
static inline vf load_f16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    vu x = __builtin_convertvector(h, vu);
    vu exp = (x >> 10) & 0x1fu, mant = x & 0x3ffu;
    vu normal = ((exp + 112u) << 23) | (mant << 13);
    vu special = 0x7f800000u | (mant << 13);
    vf small = __builtin_convertvector(mant, vf) * (1.0f / 16777216.0f);
    vi is_small = exp == 0u, is_special = exp == 31u;
    vi bits = ((vi)normal & ~is_small & ~is_special) | ((vi)small & is_small) | ((vi)special & is_special);
    return (vf)(bits | (vi)((x & 0x8000u) << 16));
}

static inline float half_to_float(uint16_t h) {
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) { float f = (float)mant * (1.0f / 16777216.0f); memcpy(&bits, &f, 4); }
    else if (exp == 31) bits = 0x7f800000u | (mant << 13);
    else bits = ((exp + 112) << 23) | (mant << 13);
    bits |= (uint32_t)(h & 0x8000) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float scalar_f32(const void *p, int64_t i, int dtype) {
    if (dtype == GS_BF16) { uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16; float f; memcpy(&f, &u, 4); return f; }
    if (dtype == GS_F16) return half_to_float(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

/* float32, bfloat16 and float16, as float32: two vectors per iteration (independent accumulators). */
#define GS_PART_LOOP(T, LOAD)                                                         \
    do {                                                                              \
        const T *p = (const T *)g + first;                                            \
        for (; i + step <= n; i += step) {                                            \
            vf u = LOAD(p + i), v = LOAD(p + i + GS_LANES);                           \
            s0 += u * u; s1 += v * v;                                                 \
            vf au = abs_f(u), av = abs_f(v);                                          \
            a0 += au; a1 += av;                                                       \
            m0 = max_f(au, m0); m1 = max_f(av, m1);                                   \
            z0 -= (u == zero); z1 -= (v == zero);                                     \
        }                                                                             \
        if (w) {                                                                      \
            const T *r = (const T *)w + first;                                        \
            for (int64_t j = 0; j + step <= n; j += step) {                           \
                vf u = LOAD(r + j), v = LOAD(r + j + GS_LANES);                       \
                q0 += u * u; q1 += v * v;                                             \
            }                                                                         \
        }                                                                             \
    } while (0)

static part_sums part_f(const void *g, const void *w, int64_t first, int64_t n, int dtype) {
    vf s0 = {0}, s1 = {0}, a0 = {0}, a1 = {0}, m0 = {0}, m1 = {0}, q0 = {0}, q1 = {0};
    vi z0 = {0}, z1 = {0};
    const vf zero = {0};
    int64_t i = 0;
    const int64_t step = 2 * GS_LANES;
    if (dtype == GS_F32) GS_PART_LOOP(float, load_f32);
    else if (dtype == GS_BF16) GS_PART_LOOP(uint16_t, load_bf16);
    else GS_PART_LOOP(uint16_t, load_f16);
    float sq = hsum_f(s0 + s1), ab = hsum_f(a0 + a1), mx = hmax_f(max_f(m0, m1)), wq = hsum_f(q0 + q1);
    int64_t zc = 0;
    for (int k = 0; k < GS_LANES; k++) zc += (int64_t)z0[k] + z1[k];
    for (int64_t k = i; k < n; k++) {  /* the tail: fewer elements than two vectors */
        float x = scalar_f32(g, first + k, dtype), a = fabsf(x);
        sq += x * x; ab += a; mx = a > mx ? a : mx; zc += x == 0;
        if (w) { float y = scalar_f32(w, first + k, dtype); wq += y * y; }
    }
    part_sums s = {sq, ab, (double)zc, wq, mx};
    return s;
}

static inline vd load_f64(const double *p) { vd v; memcpy(&v, p, sizeof v); return v; }
static inline vd abs_d(vd v) { return (vd)((vl)v & 0x7fffffffffffffffLL); }
static inline vd max_d(vd a, vd b) { vl gt = a > b; return (vd)(((vl)a & gt) | ((vl)b & ~gt)); }

static part_sums part_d(const double *g, const double *w, int64_t n) {
    vd s0 = {0}, s1 = {0}, a0 = {0}, a1 = {0}, m0 = {0}, m1 = {0}, q0 = {0}, q1 = {0};
    vl z0 = {0}, z1 = {0};
    const vd zero = {0};
    int64_t i = 0;
    const int64_t step = 2 * VD_LANES;
    for (; i + step <= n; i += step) {
        vd u = load_f64(g + i), v = load_f64(g + i + VD_LANES);
        s0 += u * u; s1 += v * v;
        vd au = abs_d(u), av = abs_d(v);
        a0 += au; a1 += av;
        m0 = max_d(au, m0); m1 = max_d(av, m1);
        z0 -= (u == zero); z1 -= (v == zero);
    }
    if (w) {
        int64_t j = 0;
        for (; j + step <= n; j += step) {
            vd u = load_f64(w + j), v = load_f64(w + j + VD_LANES);
            q0 += u * u; q1 += v * v;
        }
    }
    double sq = 0, ab = 0, mx = 0, wq = 0;
    int64_t zc = 0;
    vd s = s0 + s1, a = a0 + a1, m = max_d(m0, m1), q = q0 + q1;
    for (int k = 0; k < VD_LANES; k++) {
        sq += s[k]; ab += a[k]; wq += q[k]; mx = m[k] > mx ? m[k] : mx; zc += z0[k] + z1[k];
    }
    for (int64_t k = i; k < n; k++) {
        double x = g[k], y = fabs(x);
        sq += x * x; ab += y; mx = y > mx ? y : mx; zc += x == 0;
        if (w) wq += w[k] * w[k];
    }
    part_sums r = {sq, ab, (double)zc, wq, (float)mx};
    return r;
}

static part_sums part_of(const void *g, const void *w, int64_t first, int64_t n, int dtype) {
    if (dtype == GS_F64) return part_d((const double *)g + first, w ? (const double *)w + first : NULL, n);
    return part_f(g, w, first, n, dtype);
}

typedef struct {
    const void *const *g;   /* gradients (raw sums) or Adam's exp_avg (Adam sums) */
    const void *const *w;   /* weights (or NULL) or Adam's exp_avg_sq */
    const int64_t *rows, *numel;
    const int32_t *dtype;
    const double *adam;     /* Adam sums: per tensor bc1, bc2, eps (3 values); NULL for raw sums */
    int32_t n, fields;
    /* this thread's share: from (tensor t0, unit u0) up to (tensor t1, unit u1), exclusive */
    int32_t t0, t1;
    int64_t u0, u1;
    double *out;
} job;

/* A tensor's units: its rows, or (without rows) parts of GS_PART elements. */
static int64_t units_of(int64_t rows, int64_t numel) { return rows > 0 ? rows : (numel + GS_PART - 1) / GS_PART; }

static void *run(void *arg) {
    job *j = (job *)arg;
    for (int32_t t = j->t0; t <= j->t1 && t < j->n; t++) {
        int64_t rows = j->rows[t], numel = j->numel[t];
        int64_t units = units_of(rows, numel);
        int64_t from = t == j->t0 ? j->u0 : 0, to = t == j->t1 ? j->u1 : units;
        int64_t len = rows > 0 ? numel / rows : GS_PART;
        double *o = j->out + (int64_t)t * GS_FIELDS;
        for (int64_t u = from; u < to; u++) {
            int64_t start = u * len, end = start + len < numel ? start + len : numel;
            float row_max = 0;
            double row_sq = 0;
            for (int64_t p = start; p < end; p += GS_PART) {
                int64_t m = end - p < GS_PART ? end - p : GS_PART;
                part_sums s = part_of(j->g[t], j->w ? j->w[t] : NULL, p, m, j->dtype[t]);
                o[0] += s.sumsq; o[1] += s.sumabs; o[3] += s.zeros; o[5] += s.w_sumsq;
                row_sq += s.sumsq;
                row_max = s.max > row_max ? s.max : row_max;
            }
            if (isnan(row_sq)) row_max = NAN;
            if (isnan(row_max) || isnan(o[2])) o[2] = NAN;
            else if (row_max > o[2]) o[2] = row_max;
            if (rows > 0 && row_max == 0) o[4] += 1;
        }
    }
    return NULL;
}

/* Adam's state, per tensor t (exp_avg m, exp_avg_sq v, bias corrections bc1, bc2, eps), into
 * out[t * GS_ADAM_FIELDS + k]: 0 sum of v, 1 count of 0 < v < eps^2 bc2 (sqrt(v_hat) < eps),
 * 2 sum of u^2 with u = (m / bc1) / (sqrt(v / bc2) + eps), 3 count of v > 0; in float32 lanes
 * per part (float64 for float64 states), the parts' sums in double. */
#define GS_ADAM_FIELDS 4

#define GS_ADAM_LOOP(T, LOAD)                                                         \
    do {                                                                              \
        const T *pm = (const T *)m + first, *pv = (const T *)v + first;               \
        for (; i + GS_LANES <= n; i += GS_LANES) {                                    \
            vf xm = LOAD(pm + i), xv = LOAD(pv + i);                                  \
            vs += xv;                                                                 \
            vi pos = xv > zero;                                                       \
            act -= pos;                                                               \
            few -= pos & (xv < thr);                                                  \
            vf d = xv * r2;                                                           \
            for (int k = 0; k < GS_LANES; k++) d[k] = sqrtf(d[k]);                    \
            vf u = (xm * r1) / (d + e);                                               \
            us += u * u;                                                              \
        }                                                                             \
    } while (0)

static void adam_part(const void *m, const void *v, int64_t first, int64_t n, int dtype, const double *c,
                      double *o) {
    if (dtype == GS_F64) {
        const double *pm = (const double *)m + first, *pv = (const double *)v + first;
        double thr = c[2] * c[2] * c[1];
        for (int64_t i = 0; i < n; i++) {
            double x = pv[i], u = (pm[i] / c[0]) / (sqrt(x / c[1]) + c[2]);
            o[0] += x; o[1] += x > 0 && x < thr; o[2] += u * u; o[3] += x > 0;
        }
        return;
    }
    const float bc1 = (float)c[0], bc2 = (float)c[1], eps = (float)c[2], thr_s = (float)(c[2] * c[2] * c[1]);
    /* multiplied by the corrections' reciprocals (one division per element, not three; within
     * an ulp of dividing) */
    const vf zero = {0}, r1 = zero + 1.0f / bc1, r2 = zero + 1.0f / bc2, e = zero + eps, thr = zero + thr_s;
    vf vs = {0}, us = {0};
    vi few = {0}, act = {0};
    int64_t i = 0;
    if (dtype == GS_F32) GS_ADAM_LOOP(float, load_f32);
    else if (dtype == GS_BF16) GS_ADAM_LOOP(uint16_t, load_bf16);
    else GS_ADAM_LOOP(uint16_t, load_f16);
    float sv = hsum_f(vs), su = hsum_f(us);
    int64_t nf = 0, na = 0;
    for (int k = 0; k < GS_LANES; k++) { nf += few[k]; na += act[k]; }
    for (; i < n; i++) {
        float x = scalar_f32(v, first + i, dtype), u = (scalar_f32(m, first + i, dtype) / bc1) / (sqrtf(x / bc2) + eps);
        sv += x; su += u * u; nf += x > 0 && x < thr_s; na += x > 0;
    }
    o[0] += sv; o[1] += (double)nf; o[2] += su; o[3] += (double)na;
}

static void *run_adam(void *arg) {
    job *j = (job *)arg;
    for (int32_t t = j->t0; t <= j->t1 && t < j->n; t++) {
        int64_t numel = j->numel[t], units = units_of(0, numel);
        int64_t from = t == j->t0 ? j->u0 : 0, to = t == j->t1 ? j->u1 : units;
        for (int64_t u = from; u < to; u++) {
            int64_t start = u * GS_PART, m = numel - start < GS_PART ? numel - start : GS_PART;
            adam_part(j->g[t], j->w[t], start, m, j->dtype[t], j->adam + 3 * (int64_t)t,
                      j->out + (int64_t)t * GS_ADAM_FIELDS);
        }
    }
    return NULL;
}

/* Exponent fields of float32 values (float32, bfloat16 and float16 tensors read as float32,
 * times `scale` first where it is not 1), per tensor t, into out[t * GS_HIST_FIELDS + k]:
 * k = f (0..255) the elements whose exponent field is f, either sign (0: zeros and
 * subnormals, 255: infinities and NaNs); 256 + f those among them whose bits & tie_mask
 * == tie_pattern; 512 the zeros. The histogram of gradsight.stats.histogram is assembled from
 * them. adam[0] holds the scale, adam[1] and adam[2] the mask and the pattern. */
#define GS_HIST_FIELDS 513

static void *run_hist(void *arg) {
    job *j = (job *)arg;
    const float scale = (float)j->adam[0];
    const int scaled = j->adam[0] != 1.0;
    const uint32_t mask = (uint32_t)j->adam[1], pattern = (uint32_t)j->adam[2];
    for (int32_t t = j->t0; t <= j->t1 && t < j->n; t++) {
        int64_t numel = j->numel[t], units = units_of(0, numel);
        int64_t from = t == j->t0 ? j->u0 : 0, to = t == j->t1 ? j->u1 : units;
        if (from >= to) continue;
        uint64_t c0[256] = {0}, c1[256] = {0}, ties[256] = {0}, zeros = 0;
        int dtype = j->dtype[t];
        const void *g = j->g[t];
        int64_t end = to * GS_PART < numel ? to * GS_PART : numel;
        int64_t i = from * GS_PART;
        float buf[GS_LANES];
        for (; i + GS_LANES <= end; i += GS_LANES) {
            vf x;
            if (dtype == GS_F32) x = load_f32((const float *)g + i);
            else if (dtype == GS_BF16) x = load_bf16((const uint16_t *)g + i);
            else x = load_f16((const uint16_t *)g + i);
            if (scaled) x *= scale;
            memcpy(buf, &x, sizeof buf);
            for (int k = 0; k < GS_LANES; k += 2) {
                uint32_t a, b;
                memcpy(&a, buf + k, 4);
                memcpy(&b, buf + k + 1, 4);
                c0[(a >> 23) & 0xff]++;
                c1[(b >> 23) & 0xff]++;
                if ((a & mask) == pattern) ties[(a >> 23) & 0xff]++;
                if ((b & mask) == pattern) ties[(b >> 23) & 0xff]++;
                zeros += ((a & 0x7fffffffu) == 0) + ((b & 0x7fffffffu) == 0);
            }
        }
        for (; i < end; i++) {
            float x = scalar_f32(g, i, dtype);
            if (scaled) x *= scale;
            uint32_t a;
            memcpy(&a, &x, 4);
            c0[(a >> 23) & 0xff]++;
            if ((a & mask) == pattern) ties[(a >> 23) & 0xff]++;
            zeros += (a & 0x7fffffffu) == 0;
        }
        double *o = j->out + (int64_t)t * GS_HIST_FIELDS;
        for (int f = 0; f < 256; f++) { o[f] += (double)(c0[f] + c1[f]); o[256 + f] += (double)ties[f]; }
        o[512] += (double)zeros;
    }
    return NULL;
}

/* Split the elements of n tensors (units: rows, or parts without rows) across `threads`
 * threads, run `fn` on each share with its own copy of the sums, and add the copies into
 * out[n * fields] (field 2 of raw sums, the maximum, taken as such). Returns 0, or -1 when
 * memory for the threads' sums is not available. */
static int split_run(job *base, int32_t threads, void *(*fn)(void *)) {
    int32_t n = base->n, fields = base->fields;
    double *out = base->out;
    memset(out, 0, sizeof(double) * fields * (size_t)n);
    int64_t total = 0;
    for (int32_t t = 0; t < n; t++) total += base->numel[t];
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    job jobs[64];
    double *outs = NULL;
    if (threads > 1) {
        outs = (double *)calloc((size_t)threads * fields * (size_t)n, sizeof(double));
        if (!outs) return -1;
    }
    int32_t t = 0;
    int64_t u = 0, done = 0;
    for (int k = 0; k < threads; k++) {
        job *j = &jobs[k];
        *j = *base;
        j->out = threads > 1 ? outs + (size_t)k * fields * n : out;
        j->t0 = t; j->u0 = u;
        int64_t goal = k == threads - 1 ? total : total / threads * (k + 1);
        while (t < n && done < goal) {
            int64_t rows = base->rows ? base->rows[t] : 0, numel = base->numel[t];
            int64_t units = units_of(rows, numel), len = rows > 0 ? numel / rows : GS_PART;
            int64_t need = (goal - done + len - 1) / (len > 0 ? len : 1);
            if (u + need < units) { u += need; done += need * len; break; }
            done += numel - u * len;
            t++; u = 0;
        }
        j->t1 = t; j->u1 = u;
    }
    if (threads == 1) { fn(&jobs[0]); return 0; }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {   /* (a team smaller than asked for takes the shares in turn) */
        for (int k = omp_get_thread_num(); k < threads; k += omp_get_num_threads()) fn(&jobs[k]);
    }
#else
    pthread_t ids[64];
    int started[64] = {0};
    for (int k = 1; k < threads; k++) started[k] = pthread_create(&ids[k], NULL, fn, &jobs[k]) == 0;
    fn(&jobs[0]);
    for (int k = 1; k < threads; k++) {
        if (started[k]) pthread_join(ids[k], NULL);
        else fn(&jobs[k]);
    }
#endif
    for (int k = 0; k < threads; k++) {
        const double *o = outs + (size_t)k * fields * n;
        for (int32_t i = 0; i < n; i++) {
            double *d = out + (size_t)i * fields;
            const double *s = o + (size_t)i * fields;
            for (int f = 0; f < fields; f++) {
                if (f == 2 && fn == run) {
                    if (isnan(s[2]) || isnan(d[2])) d[2] = NAN;
                    else if (s[2] > d[2]) d[2] = s[2];
                } else {
                    d[f] += s[f];
                }
            }
        }
    }
    free(outs);
    return 0;
}

/* Raw sums of n tensors into out[n * GS_FIELDS] (see the top of this file); `w` may be NULL
 * (no weights). Returns 0, or -1 when memory for the threads' sums is not available. */
int gs_raw_sums(const void *const *g, const void *const *w, const int64_t *rows, const int64_t *numel,
                const int32_t *dtype, int32_t n, int32_t threads, double *out) {
    job base = {g, w, rows, numel, dtype, NULL, n, GS_FIELDS, 0, 0, 0, 0, out};
    return split_run(&base, threads, run);
}

/* Adam's sums of n parameters' states (m: exp_avg, v: exp_avg_sq or max_exp_avg_sq, of one
 * dtype and layout each) into out[n * GS_ADAM_FIELDS]; `c` holds bc1, bc2, eps per tensor. */
int gs_adam_sums(const void *const *m, const void *const *v, const int64_t *numel, const int32_t *dtype,
                 const double *c, int32_t n, int32_t threads, double *out) {
    job base = {m, v, NULL, numel, dtype, c, n, GS_ADAM_FIELDS, 0, 0, 0, 0, out};
    return split_run(&base, threads, run_adam);
}

/* Exponent-field counts (run_hist) of n float32, bfloat16 or float16 tensors into
 * out[n * GS_HIST_FIELDS]; c: the scale, the tie mask and the tie pattern. */
int gs_exponent_counts(const void *const *g, const int64_t *numel, const int32_t *dtype, const double *c,
                       int32_t n, int32_t threads, double *out) {
    job base = {g, NULL, NULL, numel, dtype, c, n, GS_HIST_FIELDS, 0, 0, 0, 0, out};
    return split_run(&base, threads, run_hist);
}
