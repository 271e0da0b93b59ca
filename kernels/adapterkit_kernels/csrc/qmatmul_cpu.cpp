// y (M, N) = x (M, K) @ W^T (+ add) for a blockwise-quantized W, decoded in registers, on CPU.
//
// For few rows of x (decoding, small batches) the work is reading W: dequantizing it to a dense
// fp32 copy and calling a GEMM writes and reads 8x (4-bit) the bytes of the codes. Here each row j
// of W is decoded once per tile of rows of x (8 fp32 rows, 16 bf16 ones), 32 weights at a time
// (one 16-byte step of codes), and multiplied with every row of the tile while in registers. Rows
// of W are walked in chunks (whole blocks) as long as keeps the tile's inputs in L1 (32 KB) while
// every row of W streams past them. Layout (formats.py): W flattened row-major, blocks of `block`
// elements, one absmax each; 4-bit: two codes a byte, the even element in the high nibble,
// level = table[code]; 8-bit: level = q / 127. W[j, k] = level * absmax, exactly the reference's
// fp32 product: per block the kernel multiplies the 16 levels by the absmax once and looks the
// codes up in that scaled table.
// x in fp32: sums in fp32 (fp32 FMAs). x in bf16 with a 4-bit W, on CPUs with AVX512-BF16: W is
// rounded to bf16 as the reference rounds it (round to nearest even; weights below 2^-126 in
// magnitude become 0) and the bf16 products are summed in fp32 (vdpbf16ps), so the result is the
// reference's bf16 matmul up to summation order.
// Needs K % block == 0 (blocks never straddle rows). x is first packed tile by tile (pack()) so
// that each step reads its R rows' inputs from one pointer: per step (K / 32 of them; 8-bit: K /
// 16 steps of 16), the R rows one after another, each with its 16 even-position inputs (the high
// nibbles') then its 16 odd-position ones (the low nibbles').
// Optionally (decoding with LoRA) it also adds scale * (x @ A^T) @ B^T in the same pass.
// Reference: adapterkit_kernels.reference.qmatmul / qlora_matmul (dequantize, then torch matmuls).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kNested = 256;  // formats.NESTED_BLOCK
constexpr int kTile = 8;          // rows of x per pass over a row of W (fp32 x: two accumulators a row)
constexpr int kTile16 = 16;       // the same for bf16 x (one accumulator a row)
constexpr int64_t kCacheBytes = 32 << 10;  // a tile's chunk of x at most this size: it stays in L1

// absmax of block b: fp32 as stored, or double-quantized levels[q[b]] * nested[b / 256] + offset.
struct Scales {
  const float* absmax = nullptr;
  const uint8_t* qabsmax = nullptr;
  const float* nested = nullptr;
  const float* levels = nullptr;
  float offset = 0.f;
  inline float operator()(int64_t b) const {
    if (absmax) return absmax[b];
    float scaled = levels[qabsmax[b]] * nested[b / kNested];
    return scaled + offset;
  }
};

// What the kernels read for one chunk of one row of W, per block of the chunk.
struct Blocks {
  const float* absmax;  // (blocks,): the absmax of each block of the chunk
  const float* levels;  // (16,): 4-bit, the code's levels
};

// The tile of x one pass over a chunk reads, packed (pack() below) so that each 16-byte step of
// codes reads the R rows' inputs one after another from one pointer, at the chunk's start.
struct Rows {
  const float* f;     // fp32 x
  const uint16_t* h;  // bf16 x
};

enum Kind { kFour = 0, kFourBf16 = 1, kEight = 2 };

// Each kernel computes, for one chunk of one row of W (``nbytes`` bytes of codes, whole blocks of
// 2^shift weights), sums[m] = sum_k W[k] x[m, k] over the chunk for R rows of x. R is a template
// argument so the accumulators stay in registers; with few rows, U steps run side by side into
// separate accumulators so the sums do not wait on the previous step's FMA.
#if defined(__AVX512F__)
inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// Runs step(u, c, t) over the chunk's 16-byte steps c, four at a time (u = 0, 1, 2, 3 mod U: with
// U > 1 the steps add into separate accumulators, so they need not wait on each other), then the
// rest one by one; t = table(c) is the step's block's scaled table, computed once for two steps
// when ``shared`` (a pair's 32 bytes lie in one block).
template <int U, typename Table, typename Step>
inline void walk(int64_t nbytes, bool shared, Table table, Step step) {
  int64_t c = 0;
  for (; c + 64 <= nbytes; c += 64) {
    const auto t0 = table(c), t2 = table(c + 32);
    step(0, c, t0);
    step(1 % U, c + 16, shared ? t0 : table(c + 16));
    step(2 % U, c + 32, t2);
    step(3 % U, c + 48, shared ? t2 : table(c + 48));
  }
  for (; c < nbytes; c += 16) step(0, c, table(c));
}

// 4-bit, fp32 x: 16 bytes = 32 weights a step, looked up in the block's scaled fp32 table.
template <int R>
void four(const uint8_t* codes, int64_t nbytes, int shift, const Blocks& blk, const Rows& x, float* sums) {
  constexpr int U = R == 1 ? 4 : R == 2 ? 2 : 1;
  __m512 acc[U][2][R];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < R; ++m) acc[u][0][m] = acc[u][1][m] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi32(15);
  const __m512 levels = _mm512_loadu_ps(blk.levels);
  auto scaled = [&](int64_t c) { return _mm512_mul_ps(levels, _mm512_set1_ps(blk.absmax[(2 * c) >> shift])); };
  walk<U>(nbytes, shift >= 6, scaled, [&](int u, int64_t c, __m512 table) {  // table: level * absmax
    const __m512i byte = _mm512_cvtepu8_epi32(load16(codes + c));
    const __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(byte, 4), table);  // W[2i]
    const __m512 wl = _mm512_permutexvar_ps(_mm512_and_si512(byte, low4), table);  // W[2i + 1]
    const float* xs = x.f + c * 2 * R;  // (R, 32): each row's 16 even-position inputs, then its 16 odd ones
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m) {
      acc[u][0][m] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xs + m * 32), acc[u][0][m]);
      acc[u][1][m] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xs + m * 32 + 16), acc[u][1][m]);
    }
  });
  for (int m = 0; m < R; ++m) {
    __m512 total = _mm512_add_ps(acc[0][0][m], acc[0][1][m]);
    for (int u = 1; u < U; ++u) total = _mm512_add_ps(total, _mm512_add_ps(acc[u][0][m], acc[u][1][m]));
    sums[m] = _mm512_reduce_add_ps(total);
  }
}

// 8-bit, fp32 x: 16 weights a step.
template <int R>
void eight(const uint8_t* codes, int64_t nbytes, int shift, const Blocks& blk, const Rows& x, float* sums) {
  constexpr int U = R == 1 ? 4 : R == 2 ? 2 : 1;
  __m512 acc[U][R];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < R; ++m) acc[u][m] = _mm512_setzero_ps();
  const __m512 inv = _mm512_set1_ps(1.0f / 127.0f);
  auto absmax = [&](int64_t c) { return _mm512_set1_ps(blk.absmax[c >> shift]); };
  walk<U>(nbytes, true, absmax, [&](int u, int64_t c, __m512 s) {  // 16 weights a step: a pair is in one block
    const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(codes + c)));
    const __m512 w = _mm512_mul_ps(_mm512_mul_ps(q, inv), s);
    const float* xs = x.f + c * R;  // (R, 16)
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m) acc[u][m] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xs + m * 16), acc[u][m]);
  });
  for (int m = 0; m < R; ++m) {
    __m512 total = acc[0][m];
    for (int u = 1; u < U; ++u) total = _mm512_add_ps(total, acc[u][m]);
    sums[m] = _mm512_reduce_add_ps(total);
  }
}

#if defined(__AVX512BF16__)
constexpr bool kBf16Dot = true;

// 4-bit, bf16 x: 32 weights a step, one 16-bit lookup in the block's bf16 table, then vdpbf16ps.
template <int R>
void four_bf16(const uint8_t* codes, int64_t nbytes, int shift, const Blocks& blk, const Rows& x, float* sums) {
  constexpr int U = R == 1 ? 4 : R <= 4 ? 2 : 1;  // dot products take longer than FMAs: more in flight
  __m512 acc[U][R];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < R; ++m) acc[u][m] = _mm512_setzero_ps();
  const __m256i low4 = _mm256_set1_epi16(15);
  const __m512 levels = _mm512_loadu_ps(blk.levels);
  auto rounded = [&](int64_t c) {  // level * absmax rounded to bf16 (to nearest even); lanes 16-31 unused
    const __m512 scaled = _mm512_mul_ps(levels, _mm512_set1_ps(blk.absmax[(2 * c) >> shift]));
    return _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(scaled));
  };
  walk<U>(nbytes, shift >= 6, rounded, [&](int u, int64_t c, __m512i table) {
    const __m256i byte = _mm256_cvtepu8_epi16(load16(codes + c));
    const __m512i code = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_srli_epi16(byte, 4)),
                                            _mm256_and_si256(byte, low4), 1);  // W[2i] then W[2i + 1]
    const __m512bh w = (__m512bh)_mm512_permutexvar_epi16(code, table);
    const uint16_t* xs = x.h + c * 2 * R;  // (R, 32), as the fp32 kernel's
#pragma GCC unroll 16
    for (int m = 0; m < R; ++m) acc[u][m] = _mm512_dpbf16_ps(acc[u][m], w, (__m512bh)_mm512_loadu_si512(xs + m * 32));
  });
  for (int m = 0; m < R; ++m) {
    __m512 total = acc[0][m];
    for (int u = 1; u < U; ++u) total = _mm512_add_ps(total, acc[u][m]);
    sums[m] = _mm512_reduce_add_ps(total);
  }
}
#else
constexpr bool kBf16Dot = false;
template <int R>
void four_bf16(const uint8_t*, int64_t, int, const Blocks&, const Rows&, float*) {
  TORCH_CHECK(false, "qmatmul_cpu: this build has no bf16 dot products (AVX512-BF16)");
}
#endif
#else
constexpr bool kBf16Dot = false;

// Portable loops (no AVX-512): the same sums, one weight at a time.
template <int R>
void four(const uint8_t* codes, int64_t nbytes, int shift, const Blocks& blk, const Rows& x, float* sums) {
  for (int m = 0; m < R; ++m) sums[m] = 0.f;
  for (int64_t c = 0; c < nbytes; ++c) {
    const float s = blk.absmax[(2 * c) >> shift];
    const float wh = blk.levels[codes[c] >> 4] * s, wl = blk.levels[codes[c] & 15] * s;
    const float* xs = x.f + (c / 16) * 32 * R + c % 16;  // this byte's even input; its odd one 16 further
    for (int m = 0; m < R; ++m) sums[m] += wh * xs[m * 32] + wl * xs[m * 32 + 16];
  }
}

template <int R>
void eight(const uint8_t* codes, int64_t nbytes, int shift, const Blocks& blk, const Rows& x, float* sums) {
  for (int m = 0; m < R; ++m) sums[m] = 0.f;
  for (int64_t c = 0; c < nbytes; ++c) {
    const float w = (static_cast<float>(static_cast<int8_t>(codes[c])) * (1.0f / 127.0f)) * blk.absmax[c >> shift];
    const float* xs = x.f + (c / 16) * 16 * R + c % 16;
    for (int m = 0; m < R; ++m) sums[m] += w * xs[m * 16];
  }
}

template <int R>
void four_bf16(const uint8_t*, int64_t, int, const Blocks&, const Rows&, float*) {
  TORCH_CHECK(false, "qmatmul_cpu: this build has no bf16 dot products (AVX512-BF16)");
}
#endif

using RowSums = void (*)(const uint8_t*, int64_t, int, const Blocks&, const Rows&, float*);
// kRowSums[kind][R - 1]: the kernel of that kind for R rows of x.
constexpr RowSums kRowSums[3][kTile16] = {
    {four<1>, four<2>, four<3>, four<4>, four<5>, four<6>, four<7>, four<8>},
    {four_bf16<1>, four_bf16<2>, four_bf16<3>, four_bf16<4>, four_bf16<5>, four_bf16<6>, four_bf16<7>,
     four_bf16<8>, four_bf16<9>, four_bf16<10>, four_bf16<11>, four_bf16<12>, four_bf16<13>, four_bf16<14>,
     four_bf16<15>, four_bf16<16>},
    {eight<1>, eight<2>, eight<3>, eight<4>, eight<5>, eight<6>, eight<7>, eight<8>},
};

Scales scales_of(const torch::Tensor& absmax, const c10::optional<torch::Tensor>& nested,
                 const c10::optional<torch::Tensor>& offset, const c10::optional<torch::Tensor>& levels) {
  Scales sc;
  if (nested.has_value()) {
    sc.qabsmax = absmax.data_ptr<uint8_t>();
    sc.nested = nested->data_ptr<float>();
    sc.levels = levels->data_ptr<float>();
    sc.offset = *offset->data_ptr<float>();
  } else {
    sc.absmax = absmax.data_ptr<float>();
  }
  return sc;
}

// sum_i a[i] b[i] (the LoRA branch's small products), 16 lanes at a time with AVX-512.
float dot(const float* a, const float* b, int64_t count) {
  int64_t i = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= count; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < count) {
    const __mmask16 rest = static_cast<__mmask16>((1u << (count - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rest, a + i), _mm512_maskz_loadu_ps(rest, b + i), acc);
    i = count;
  }
  total = _mm512_reduce_add_ps(acc);
#endif
  for (; i < count; ++i) total += a[i] * b[i];
  return total;
}

// The absmax of blocks first .. first + count - 1: a pointer into the stored fp32 ones, or, double
// quantized, computed into ``out`` (16 blocks at a time with AVX-512; the same fp32 operations).
const float* absmax_of(const Scales& sc, int64_t first, int64_t count, float* out) {
  if (sc.absmax) return sc.absmax + first;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 offset = _mm512_set1_ps(sc.offset);
  __m512 table[16];  // the 256 levels, 16 a register: looked up by permutes (a gather is slower)
  if (count >= 16)
    for (int t = 0; t < 16; ++t) table[t] = _mm512_loadu_ps(sc.levels + 16 * t);
  for (; i + 16 <= count; i += 16) {
    const int64_t b = first + i;
    const __m512i q = _mm512_cvtepu8_epi32(load16(sc.qabsmax + b));
    const __m512i pair = _mm512_srli_epi32(q, 5);  // which 32 levels: table[2 pair], table[2 pair + 1]
    __m512 level = _mm512_permutex2var_ps(table[0], q, table[1]);
#pragma GCC unroll 7
    for (int p = 1; p < 8; ++p) {
      const __mmask16 here = _mm512_cmpeq_epi32_mask(pair, _mm512_set1_epi32(p));
      level = _mm512_mask_mov_ps(level, here, _mm512_permutex2var_ps(table[2 * p], q, table[2 * p + 1]));
    }
    const int split = static_cast<int>(kNested - b % kNested);  // lanes from here on: the next nested group
    const __mmask16 next = split >= 16 ? 0 : static_cast<__mmask16>(0xFFFF << split);
    const __m512 nested = _mm512_mask_blend_ps(next, _mm512_set1_ps(sc.nested[b / kNested]),
                                               _mm512_set1_ps(sc.nested[(b + 15) / kNested]));
    _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_mul_ps(level, nested), offset));
  }
#endif
  for (; i < count; ++i) out[i] = sc(first + i);
  return out;
}

// x (M, K) packed for the kernels, tile by tile (tiles of ``tile`` rows; the last may have fewer,
// R): tile m0 at m0 K, as (K / step, R, step) for steps of 32 weights (4-bit: each row's 16
// even-position inputs, then its 16 odd ones, as the codes' high and low nibbles) or 16 (8-bit).
template <typename T>
std::vector<T> pack(const T* x, int64_t rows, int64_t k, int tile, bool four) {
  std::vector<T> out(rows * k);
  const int64_t step = four ? 32 : 16;
  for (int64_t m0 = 0; m0 < rows; m0 += tile) {
    const int64_t r = std::min<int64_t>(tile, rows - m0);
    for (int64_t t = 0; t < k / step; ++t)
      for (int64_t m = 0; m < r; ++m) {
        const T* src = x + (m0 + m) * k + t * step;
        T* dst = out.data() + m0 * k + (t * r + m) * step;
        for (int64_t i = 0; i < step; ++i) dst[i] = four ? src[(2 * i) % step + (2 * i) / step] : src[i];
      }
  }
  return out;
}

}  // namespace

// x (M, K) fp32, or bf16 with a 4-bit W in a build with bf16_dot(); table: the 16 fp32 levels
// (4-bit) or empty (8-bit). out: (M, N) fp32, added to in place.
// lora_a (r, K), lora_b (N, r) fp32, given together: also add scale * (x @ A^T) @ B^T (decoding with LoRA:
// h = scale * x @ A^T (M, r) first, then each output adds its row of B against h).
void qmatmul_add(torch::Tensor x, torch::Tensor codes, torch::Tensor table, torch::Tensor absmax,
                 c10::optional<torch::Tensor> nested, c10::optional<torch::Tensor> offset,
                 c10::optional<torch::Tensor> levels, int64_t block, torch::Tensor out,
                 c10::optional<torch::Tensor> lora_a, c10::optional<torch::Tensor> lora_b, double scale) {
  const bool four = table.numel() == 16, bf16 = x.scalar_type() == at::kBFloat16;
  const int64_t k = x.size(1), n = out.size(1), rows = out.size(0);
  TORCH_CHECK(k % block == 0 && block >= 32 && (block & (block - 1)) == 0,
              "qmatmul_cpu: K must be a multiple of the block, a power of two >= 32");
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous() && x.size(0) == rows && out.scalar_type() == at::kFloat,
              "qmatmul_cpu: bad x / out");
  TORCH_CHECK(x.scalar_type() == at::kFloat || (bf16 && four && kBf16Dot),
              "qmatmul_cpu: x must be fp32 (bf16 only with a 4-bit weight, on CPUs with AVX512-BF16)");
  const Kind kind = !four ? kEight : bf16 ? kFourBf16 : kFour;
  const Scales sc = scales_of(absmax, nested, offset, levels);
  const int shift = __builtin_ctzll(block);  // blocks are powers of two (formats.BLOCKS)
  const torch::Tensor x32 = bf16 ? x.to(at::kFloat) : x;  // the LoRA branch's input
  const int tile = kind == kFourBf16 ? kTile16 : kTile;    // rows of x per pass
  std::vector<float> packed;
  std::vector<uint16_t> packed16;
  if (bf16)
    packed16 = pack(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), rows, k, tile, four);
  else
    packed = pack(x32.data_ptr<float>(), rows, k, tile, four);
  const int64_t r = lora_a.has_value() ? lora_a->size(0) : 0;
  std::vector<float> h(rows * r);  // (M, r)
  const float* lb = nullptr;
  if (r) {
    TORCH_CHECK(lora_a->is_contiguous() && lora_b->is_contiguous() && lora_a->size(1) == k &&
                    lora_b->size(0) == n && lora_b->size(1) == r,
                "qmatmul_cpu: bad LoRA factors");
    const float* la = lora_a->data_ptr<float>();
    const float* xs = x32.data_ptr<float>();
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t q = 0; q < r; ++q) {
        h[m * r + q] = dot(xs + m * k, la + q * k, k) * static_cast<float>(scale);
      }
    lb = lora_b->data_ptr<float>();
  }
  const float* tab = four ? table.data_ptr<float>() : nullptr;
  float* y = out.data_ptr<float>();
  const uint8_t* c = static_cast<const uint8_t*>(codes.data_ptr());
  const int64_t x_bytes = bf16 ? 2 : 4;
  const int64_t per_byte = four ? 2 : 1;  // weights per byte of codes
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    float sums[kTile16];
    std::vector<float> absmax_buf(k >> shift);  // the absmax of one chunk's blocks, double quantized
    for (int64_t m0 = 0; m0 < rows; m0 += tile) {
      const int r_tile = static_cast<int>(std::min<int64_t>(tile, rows - m0));
      const RowSums kernel = kRowSums[kind][r_tile - 1];
      // Weights of a row per pass: as many as keep the tile's inputs in L1, whole blocks (powers of two).
      int64_t chunk = block;
      while (chunk < k && 2 * chunk * r_tile * x_bytes <= kCacheBytes) chunk *= 2;
      for (int64_t k0 = 0; k0 < k; k0 += chunk) {  // the tile's chunk of x stays in cache for every row of W
        const int64_t len = std::min(chunk, k - k0), blocks = len >> shift;
        const int64_t at = m0 * k + k0 * r_tile;  // the tile's packed inputs before the chunk
        const Rows x_chunk{bf16 ? nullptr : packed.data() + at, bf16 ? packed16.data() + at : nullptr};
        for (int64_t j = begin; j < end; ++j) {
          const int64_t first = (j * k + k0) >> shift;  // the chunk's first block
          const Blocks blk{absmax_of(sc, first, blocks, absmax_buf.data()), tab};
#if defined(__AVX512F__)
          if (chunk < k && j + 1 < end)  // the next row's codes of this chunk: rows are far apart in memory
            for (int64_t l = 0; l < len / per_byte; l += 64)
              _mm_prefetch(reinterpret_cast<const char*>(c + ((j + 1) * k + k0) / per_byte + l), _MM_HINT_T0);
#endif
          kernel(c + (j * k + k0) / per_byte, len / per_byte, shift, blk, x_chunk, sums);
          for (int m = 0; m < r_tile; ++m) y[(m0 + m) * n + j] += sums[m];
        }
      }
      for (int64_t j = begin; j < end && r; ++j)  // the LoRA branch: h (M, r) against row j of B
        for (int m = 0; m < r_tile; ++m) y[(m0 + m) * n + j] += dot(h.data() + (m0 + m) * r, lb + j * r, r);
    }
  });
}

// out (numel,) = W flattened, dense: level * absmax in fp32 (the reference's dequantize), or that
// rounded to bf16 (round to nearest even; weights below 2^-126 in magnitude become 0) when out is
// bf16. Any shape: blocks are taken over the flat weight; numel % block == 0. For the matmuls of
// many rows, where torch's GEMM wins: the reference dequantizes with several passes of torch ops.
void dequantize(torch::Tensor codes, torch::Tensor table, torch::Tensor absmax, c10::optional<torch::Tensor> nested,
                c10::optional<torch::Tensor> offset, c10::optional<torch::Tensor> levels, int64_t block,
                torch::Tensor out) {
  const bool four = table.numel() == 16, bf16 = out.scalar_type() == at::kBFloat16;
  const int64_t numel = out.numel();
  TORCH_CHECK(numel % block == 0 && block >= 32 && (block & (block - 1)) == 0 && out.is_contiguous(),
              "qmatmul_cpu.dequantize: whole blocks (a power of two >= 32) into a contiguous output");
  TORCH_CHECK(out.scalar_type() == at::kFloat || bf16, "qmatmul_cpu.dequantize: fp32 or bf16 output");
  const Scales sc = scales_of(absmax, nested, offset, levels);
  const uint8_t* c = static_cast<const uint8_t*>(codes.data_ptr());
  const float* tab = four ? table.data_ptr<float>() : nullptr;
  float* out32 = bf16 ? nullptr : out.data_ptr<float>();
  uint16_t* out16 = bf16 ? reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) : nullptr;
  at::parallel_for(0, numel / block, 64, [&](int64_t first, int64_t last) {
    std::vector<float> buf(last - first);
    const float* scale = absmax_of(sc, first, last - first, buf.data());
    for (int64_t b = first; b < last; ++b) {
      const float s = scale[b - first];
      const int64_t w0 = b * block;  // the block's first weight
#if defined(__AVX512F__)
      if (four && (!bf16 || kBf16Dot)) {
        const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(tab), _mm512_set1_ps(s));  // level * absmax
        const __m512i low4 = _mm512_set1_epi32(15);
        const __m512i evens = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        const __m512i odds = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        for (int64_t w = w0; w < w0 + block; w += 32) {
          const __m512i byte = _mm512_cvtepu8_epi32(load16(c + w / 2));
          const __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(byte, 4), t);    // W[w + 2i]
          const __m512 wl = _mm512_permutexvar_ps(_mm512_and_si512(byte, low4), t);  // W[w + 2i + 1]
          const __m512 lo = _mm512_permutex2var_ps(wh, evens, wl), hi = _mm512_permutex2var_ps(wh, odds, wl);
          if (bf16) {
#if defined(__AVX512BF16__)
            _mm512_storeu_si512(out16 + w, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
#endif
          } else {
            _mm512_storeu_ps(out32 + w, lo);
            _mm512_storeu_ps(out32 + w + 16, hi);
          }
        }
        continue;
      }
#endif
      for (int64_t w = w0; w < w0 + block; ++w) {
        const float v = four ? tab[(c[w / 2] >> (w % 2 ? 0 : 4)) & 15] * s
                             : (static_cast<float>(static_cast<int8_t>(c[w])) * (1.0f / 127.0f)) * s;
        if (bf16) out16[w] = c10::BFloat16(v).x;
        else out32[w] = v;
      }
    }
  });
}

bool vectorized() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

bool bf16_dot() { return kBf16Dot; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qmatmul_add", &qmatmul_add, "out += x @ W^T (+ scale x A^T B^T) for a blockwise-quantized W (see above)");
  m.def("dequantize", &dequantize, "out = the dense weight, fp32 or bf16 (see above)");
  m.def("vectorized", &vectorized, "whether this build decodes with AVX-512 (else portable loops)");
  m.def("bf16_dot", &bf16_dot, "whether this build takes bf16 x with a 4-bit W (AVX512-BF16 dot products)");
}
