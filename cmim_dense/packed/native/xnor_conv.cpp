// XNOR-popcount 2-D convolution of +-1 tensors on bit-packed 64-bit words (cmim_dense, docs/export.md).
//
// For +-1 vectors x, w of length K stored as bits (1 = +1, 0 = -1):
//     dot(x, w) = K - 2 popcount(x XOR w)                          (XNOR-Net, Rastegari et al. 2016, Sec. 3.2)
// Channels are packed along 64-bit words (one word = 64 channels of one pixel); bits past C_in are 0 in
// both operands, so they never count.  One build serves every x86-64 CPU: the AVX-512 VPOPCNTDQ and
// AVX2 (nibble lookup with VPSHUFB, Mula et al. 2018) kernels carry target attributes and are chosen
// at run time from CPUID; a portable kernel covers other CPUs.  Work is split with OpenMP.
//
// Packed input layout (XnorGeometry): words[n][word][row][phase][column], the padded map's column c
// stored at (phase c % stride_w, column c / stride_w), so that the taps of consecutive output
// columns are consecutive words for every stride and dilation.  Padding positions hold `fill`.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define XNOR_X86 1
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the packed-bit layout assumes a little-endian CPU"
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

extern "C" {

// Where the bits of a packed activation live (see the layout above).
struct XnorGeometry {
    int64_t batch, words, rows, phases, row_words;  // buffer extents
    int64_t channels, height, width, pad_h, pad_w;  // the data region and its offset in the padded map
};

// One call: optionally pack a float input, then convolve and apply the epilogue.
struct XnorConvArgs {
    const float* x;             // NCHW float input to pack (sign of x + shift), or NULL: `input` is packed
    const float* shift;         // (N, C) values added before the sign test, or NULL
    uint64_t fill;              // padding word: all ones (+1) or zero (-1), masked to the valid channels
    uint64_t* input;            // packed input, geometry `in`
    XnorGeometry in;
    const uint64_t* weight;     // (ceil(C_out / 8), kh, kw, words, 8): 8 output channels interleaved
    const int32_t* tap_sums;    // (C_out, kh * kw) channel sums of the +-1 weights: zero-padding correction
    int64_t out_channels, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, out_h, out_w;
    int64_t bits_out;           // 0: float epilogue, 1: packed-bit epilogue
    const float* alpha;         // float epilogue: out = alpha[o] * dot + beta[o]
    const float* beta;
    float* out;                 // (N, C_out, out_h, out_w)
    const int32_t* sign;        // packed-bit epilogue: bit = sign[o] * dot >= threshold[o]
    const int32_t* threshold;
    uint64_t* out_bits;         // packed output, geometry `next`
    XnorGeometry next;
    int64_t isa, threads;
};

}  // extern "C"

enum { ISA_PORTABLE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

// What every tile needs besides the arguments.
struct Plan {
    const int64_t* offsets;  // word offset of reduction step k (tap, word) from the tile's first input word
    int64_t steps;           // kh * kw * words
    int64_t groups;          // ceil(C_out / 8)
    int64_t tiles;           // tiles per output row
    int64_t taps;            // kh * kw * C_in: the K of dot = K - 2 popcount
};

static ALWAYS_INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- packing ---------------------------------------------------------------------------------------

static ALWAYS_INLINE uint64_t* row_start(const XnorGeometry& g, uint64_t* words, int64_t n, int64_t word,
                                         int64_t row) {
    return words + ((n * g.words + word) * g.rows + row) * g.phases * g.row_words;
}

// Pack padded row `row` of word `word` of sample n: 64 channels per word, bit b = (x[c] + shift >= 0).
static ALWAYS_INLINE void pack_row(const XnorConvArgs* a, int64_t n, int64_t word, int64_t row) {
    const XnorGeometry& g = a->in;
    uint64_t* dst = row_start(g, a->input, n, word, row);
    const int64_t span = g.phases * g.row_words;
    const int64_t h = row - g.pad_h;
    const int64_t c0 = 64 * word, count = min64(64, g.channels - c0);
    const uint64_t word_fill = count == 64 ? a->fill : a->fill & ((uint64_t(1) << count) - 1);
    for (int64_t i = 0; i < span; ++i) dst[i] = word_fill;
    if (h < 0 || h >= g.height) return;
    const int64_t plane = g.height * g.width;
    const float* src = a->x + (n * g.channels + c0) * plane + h * g.width;
    const float* shift = a->shift ? a->shift + n * g.channels + c0 : nullptr;
    enum { B = 16 };
    for (int64_t w0 = 0; w0 < g.width; w0 += B) {
        uint64_t acc[B] = {0};
        const int64_t lanes = min64(B, g.width - w0);
        if (lanes == B) {
            for (int64_t b = 0; b < count; ++b) {
                const float s = shift ? shift[b] : 0.0f;
                const float* v = src + b * plane + w0;
                for (int l = 0; l < B; ++l) acc[l] |= uint64_t(v[l] + s >= 0.0f) << b;
            }
        } else {
            for (int64_t b = 0; b < count; ++b) {
                const float s = shift ? shift[b] : 0.0f;
                const float* v = src + b * plane + w0;
                for (int64_t l = 0; l < lanes; ++l) acc[l] |= uint64_t(v[l] + s >= 0.0f) << b;
            }
        }
        for (int64_t l = 0; l < lanes; ++l) {
            const int64_t c = w0 + l + g.pad_w;
            dst[(c % g.phases) * g.row_words + c / g.phases] = acc[l];
        }
    }
}

// ---- popcount tiles: 8 output channels x P output columns ---------------------------------------------

// mismatches[r][l] = sum_k popcount(input[base + offsets[k] + l] XOR weight[8 k + r])
template <int P>
static void tile_portable(const uint64_t* base, const Plan& p, const uint64_t* weight, int64_t* mismatches) {
    int64_t acc[8][P] = {{0}};
    for (int64_t k = 0; k < p.steps; ++k) {
        const uint64_t* x = base + p.offsets[k];
        for (int r = 0; r < 8; ++r)
            for (int l = 0; l < P; ++l) acc[r][l] += __builtin_popcountll(x[l] ^ weight[8 * k + r]);
    }
    memcpy(mismatches, acc, sizeof(acc));
}

#ifdef XNOR_X86
template <int V>
__attribute__((target("avx512f,avx512vpopcntdq")))
static void tile_avx512(const uint64_t* base, const Plan& p, const uint64_t* weight, int64_t* mismatches) {
    __m512i acc[8][V];
    for (int r = 0; r < 8; ++r)
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_si512();
    for (int64_t k = 0; k < p.steps; ++k) {
        const uint64_t* src = base + p.offsets[k];
        __m512i x[V];
        for (int v = 0; v < V; ++v) x[v] = _mm512_loadu_si512(src + 8 * v);
        for (int r = 0; r < 8; ++r) {
            const __m512i w = _mm512_set1_epi64(int64_t(weight[8 * k + r]));
            for (int v = 0; v < V; ++v)
                acc[r][v] = _mm512_add_epi64(acc[r][v], _mm512_popcnt_epi64(_mm512_xor_si512(x[v], w)));
        }
    }
    for (int r = 0; r < 8; ++r)
        for (int v = 0; v < V; ++v) _mm512_storeu_si512(mismatches + r * 8 * V + 8 * v, acc[r][v]);
}

// Byte counts from a 16-entry nibble table (VPSHUFB), summed in 8-bit lanes for up to 31 steps
// (8 * 31 = 248 < 256), then widened to 64-bit lanes with VPSADBW.
__attribute__((target("avx2")))
static void tile_avx2(const uint64_t* base, const Plan& p, const uint64_t* weight, int64_t* mismatches) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i total[8];
    for (int r = 0; r < 8; ++r) total[r] = zero;
    for (int64_t k0 = 0; k0 < p.steps; k0 += 31) {
        __m256i bytes[8];
        for (int r = 0; r < 8; ++r) bytes[r] = zero;
        const int64_t k1 = min64(p.steps, k0 + 31);
        for (int64_t k = k0; k < k1; ++k) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + p.offsets[k]));
            for (int r = 0; r < 8; ++r) {
                const __m256i t = _mm256_xor_si256(x, _mm256_set1_epi64x(int64_t(weight[8 * k + r])));
                const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(t, low));
                const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(t, 4), low));
                bytes[r] = _mm256_add_epi8(bytes[r], _mm256_add_epi8(lo, hi));
            }
        }
        for (int r = 0; r < 8; ++r) total[r] = _mm256_add_epi64(total[r], _mm256_sad_epu8(bytes[r], zero));
    }
    for (int r = 0; r < 8; ++r) _mm256_storeu_si256(reinterpret_cast<__m256i*>(mismatches + 4 * r), total[r]);
}
#endif

// ---- epilogue ------------------------------------------------------------------------------------

// From mismatches to the layer's output for one tile: dot = K - 2 mismatches (- zero-padding correction),
// then either alpha * dot + beta (float) or the packed bits sign * dot >= threshold.
template <int P>
static ALWAYS_INLINE void epilogue(const XnorConvArgs* a, const Plan& p, int64_t n, int64_t group, int64_t oh,
                                   int64_t ow0, const int64_t* mismatches) {
    const XnorGeometry& g = a->in;
    const int64_t lanes = min64(P, a->out_w - ow0);
    const int64_t channels = min64(8, a->out_channels - 8 * group);
    int32_t dot[8][P];
    for (int r = 0; r < 8; ++r)
        for (int l = 0; l < P; ++l) dot[r][l] = int32_t(p.taps - 2 * mismatches[r * P + l]);
    if (a->tap_sums) {
        // taps on zero padding were computed as +1: subtract their weight sums (docs/export.md, step 4)
        const int64_t top = oh * a->stride_h - g.pad_h, left = ow0 * a->stride_w - g.pad_w;
        const bool inside = top >= 0 && top + (a->kernel_h - 1) * a->dilation_h < g.height && left >= 0 &&
                            left + (lanes - 1) * a->stride_w + (a->kernel_w - 1) * a->dilation_w < g.width;
        if (!inside) {
            for (int64_t i = 0; i < a->kernel_h; ++i) {
                const int64_t y = top + i * a->dilation_h;
                const bool row_out = y < 0 || y >= g.height;
                for (int64_t j = 0; j < a->kernel_w; ++j)
                    for (int64_t l = 0; l < lanes; ++l) {
                        const int64_t x = left + l * a->stride_w + j * a->dilation_w;
                        if (!row_out && x >= 0 && x < g.width) continue;
                        for (int64_t r = 0; r < channels; ++r)
                            dot[r][l] -= a->tap_sums[(8 * group + r) * a->kernel_h * a->kernel_w +
                                                     i * a->kernel_w + j];
                    }
            }
        }
    }
    if (!a->bits_out) {
        for (int64_t r = 0; r < channels; ++r) {
            const int64_t o = 8 * group + r;
            const float alpha = a->alpha[o], beta = a->beta[o];
            float* dst = a->out + ((n * a->out_channels + o) * a->out_h + oh) * a->out_w + ow0;
            for (int64_t l = 0; l < lanes; ++l) dst[l] = alpha * float(dot[r][l]) + beta;
        }
        return;
    }
    uint8_t bits[P] = {0};
    for (int64_t r = 0; r < channels; ++r) {
        const int32_t sign = a->sign[8 * group + r], threshold = a->threshold[8 * group + r];
        for (int l = 0; l < P; ++l) bits[l] |= uint8_t(sign * dot[r][l] >= threshold) << r;
    }
    const XnorGeometry& next = a->next;
    uint64_t* row = row_start(next, a->out_bits, n, group / 8, oh + next.pad_h);
    for (int64_t l = 0; l < lanes; ++l) {
        const int64_t c = ow0 + l + next.pad_w;
        reinterpret_cast<uint8_t*>(row + (c % next.phases) * next.row_words + c / next.phases)[group % 8] = bits[l];
    }
}

// ---- per-task work, compiled once per instruction set -------------------------------------------------

typedef void (*PackTask)(const XnorConvArgs*, int64_t);
typedef void (*ConvTask)(const XnorConvArgs*, const Plan&, int64_t);

static ALWAYS_INLINE void pack_task(const XnorConvArgs* a, int64_t task) {
    const XnorGeometry& g = a->in;
    pack_row(a, task / (g.words * g.rows), (task / g.rows) % g.words, task % g.rows);
}

template <int P, void (*TILE)(const uint64_t*, const Plan&, const uint64_t*, int64_t*)>
static ALWAYS_INLINE void conv_task(const XnorConvArgs* a, const Plan& p, int64_t task) {
    const XnorGeometry& g = a->in;
    const int64_t tile = task % p.tiles, oh = (task / p.tiles) % a->out_h;
    const int64_t group = (task / (p.tiles * a->out_h)) % p.groups, n = task / (p.tiles * a->out_h * p.groups);
    const int64_t ow0 = tile * P;
    const uint64_t* base = a->input + (n * g.words * g.rows + oh * a->stride_h) * g.phases * g.row_words + ow0;
    alignas(64) int64_t mismatches[8 * P];
    TILE(base, p, a->weight + group * p.steps * 8, mismatches);
    epilogue<P>(a, p, n, group, oh, ow0, mismatches);
}

static void pack_portable(const XnorConvArgs* a, int64_t task) { pack_task(a, task); }
static void conv_portable(const XnorConvArgs* a, const Plan& p, int64_t task) {
    conv_task<4, tile_portable<4>>(a, p, task);
}

#ifdef XNOR_X86
__attribute__((target("avx2")))
static void pack_avx2(const XnorConvArgs* a, int64_t task) { pack_task(a, task); }
__attribute__((target("avx2")))
static void conv_avx2(const XnorConvArgs* a, const Plan& p, int64_t task) { conv_task<4, tile_avx2>(a, p, task); }

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
static void pack_avx512(const XnorConvArgs* a, int64_t task) { pack_task(a, task); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
static void conv_avx512_8(const XnorConvArgs* a, const Plan& p, int64_t task) {
    conv_task<8, tile_avx512<1>>(a, p, task);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
static void conv_avx512_16(const XnorConvArgs* a, const Plan& p, int64_t task) {
    conv_task<16, tile_avx512<2>>(a, p, task);
}
#endif

// ---- popcount throughput microbenchmark (bench/packed_conv.py's peak estimate) ---------------------------

// The inner loop of the tiles without their memory traffic beyond L1: a 4 KiB buffer XORed with 8 words held
// in registers, popcounts accumulated per word; returns the words processed.  The empty asm statement
// makes every pass reload the buffer (no hoisting of the invariant sums).
static const uint64_t KEY = 0x9E3779B97F4A7C15ull;
#define REFRESH(data) __asm__ __volatile__("" : : "r"(data) : "memory")
static int64_t rate_portable(const uint64_t* data, int64_t reps, int64_t* sink) {
    int64_t acc[8] = {0};
    for (int64_t rep = 0; rep < reps; ++rep) {
        REFRESH(data);
        for (int64_t i = 0; i < 512; ++i)
            for (int r = 0; r < 8; ++r) acc[r] += __builtin_popcountll(data[i] ^ (KEY * (r + 1)));
    }
    for (int r = 0; r < 8; ++r) *sink += acc[r];
    return reps * 512 * 8;
}

#ifdef XNOR_X86
__attribute__((target("avx512f,avx512vpopcntdq")))
static int64_t rate_avx512(const uint64_t* data, int64_t reps, int64_t* sink) {
    __m512i acc[8], w[8];
    for (int r = 0; r < 8; ++r) {
        acc[r] = _mm512_setzero_si512();
        w[r] = _mm512_set1_epi64(int64_t(KEY * (r + 1)));
    }
    for (int64_t rep = 0; rep < reps; ++rep) {
        REFRESH(data);
        for (int64_t i = 0; i < 512; i += 8) {
            const __m512i x = _mm512_loadu_si512(data + i);
            for (int r = 0; r < 8; ++r)
                acc[r] = _mm512_add_epi64(acc[r], _mm512_popcnt_epi64(_mm512_xor_si512(x, w[r])));
        }
    }
    alignas(64) int64_t lanes[8];
    for (int r = 0; r < 8; ++r) {
        _mm512_store_si512(lanes, acc[r]);
        for (int l = 0; l < 8; ++l) *sink += lanes[l];
    }
    return reps * 512 * 8;
}

__attribute__((target("avx2")))
static int64_t rate_avx2(const uint64_t* data, int64_t reps, int64_t* sink) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256i total = zero;
    for (int64_t rep = 0; rep < reps; ++rep) {
        REFRESH(data);
        for (int64_t i0 = 0; i0 < 512; i0 += 4 * 31) {
            __m256i bytes[8];
            for (int r = 0; r < 8; ++r) bytes[r] = zero;
            for (int64_t i = i0; i < min64(512, i0 + 4 * 31); i += 4) {
                const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + i));
                for (int r = 0; r < 8; ++r) {
                    const __m256i t = _mm256_xor_si256(x, _mm256_set1_epi64x(int64_t(KEY * (r + 1))));
                    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(t, low));
                    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(t, 4), low));
                    bytes[r] = _mm256_add_epi8(bytes[r], _mm256_add_epi8(lo, hi));
                }
            }
            for (int r = 0; r < 8; ++r) total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes[r], zero));
        }
    }
    alignas(32) int64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);
    *sink += lanes[0] + lanes[1] + lanes[2] + lanes[3];
    return reps * 512 * 8;
}
#endif

extern "C" {

// The widest instruction set this CPU (and its OS) supports: 2 AVX-512 VPOPCNTDQ, 1 AVX2, 0 portable.
int64_t xnor_cpu_isa(void) {
#ifdef XNOR_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return ISA_AVX2;
#endif
    return ISA_PORTABLE;
}

// Output columns per tile for an output row of `width` columns on `isa` (the widest tile wasting no more).
int64_t xnor_tile_width(int64_t isa, int64_t width) {
    if (isa == ISA_AVX512) return (width + 15) / 16 * 16 <= (width + 7) / 8 * 8 ? 16 : 8;
    return 4;
}

// Pack (when `x` is given), convolve and apply the epilogue.  `isa` above what the CPU has is lowered.
// Returns the instruction set used.
int64_t xnor_conv2d(const XnorConvArgs* a) {
    const XnorGeometry& g = a->in;
    const int64_t isa = a->isa < xnor_cpu_isa() ? a->isa : xnor_cpu_isa();
    const int64_t width = xnor_tile_width(isa, a->out_w);
    PackTask pack = pack_portable;
    ConvTask conv = conv_portable;
#ifdef XNOR_X86
    if (isa == ISA_AVX512) {
        pack = pack_avx512;
        conv = width == 16 ? conv_avx512_16 : conv_avx512_8;
    } else if (isa == ISA_AVX2) {
        pack = pack_avx2;
        conv = conv_avx2;
    }
#endif
    Plan p;
    p.steps = a->kernel_h * a->kernel_w * g.words;
    p.groups = (a->out_channels + 7) / 8;
    p.tiles = (a->out_w + width - 1) / width;
    p.taps = a->kernel_h * a->kernel_w * g.channels;
    int64_t* offsets = static_cast<int64_t*>(malloc(sizeof(int64_t) * p.steps));
    if (!offsets) return -1;
    for (int64_t i = 0, k = 0; i < a->kernel_h; ++i)
        for (int64_t j = 0; j < a->kernel_w; ++j)
            for (int64_t w = 0; w < g.words; ++w, ++k) {
                const int64_t column = j * a->dilation_w;
                offsets[k] = ((w * g.rows + i * a->dilation_h) * g.phases + column % g.phases) * g.row_words +
                             column / g.phases;
            }
    p.offsets = offsets;
    const int64_t pack_tasks = a->x ? g.batch * g.words * g.rows : 0;
    const int64_t conv_tasks = g.batch * p.groups * a->out_h * p.tiles;
#pragma omp parallel num_threads(a->threads)
    {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < pack_tasks; ++t) pack(a, t);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < conv_tasks; ++t) conv(a, p, t);
    }
    free(offsets);
    return isa;
}

// XOR + popcount words per second on `threads` threads, each running `reps` passes of the microbenchmark loop.
double xnor_popcount_rate(int64_t isa, int64_t threads, int64_t reps) {
    isa = isa < xnor_cpu_isa() ? isa : xnor_cpu_isa();
    int64_t (*rate)(const uint64_t*, int64_t, int64_t*) = rate_portable;
#ifdef XNOR_X86
    if (isa == ISA_AVX512) rate = rate_avx512;
    else if (isa == ISA_AVX2) rate = rate_avx2;
#endif
    int64_t words = 0, sink = 0;
    const double start = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : words, sink)
    {
        alignas(64) uint64_t data[512];
        for (int i = 0; i < 512; ++i) data[i] = 0xD1B54A32D192ED03ull * (i + 1 + 512 * omp_get_thread_num());
        words += rate(data, reps, &sink);
    }
    const double seconds = omp_get_wtime() - start;
    return sink == 0x7fffffffffffffff ? 0.0 : double(words) / seconds;  // `sink` keeps the loops alive
}

}  // extern "C"
