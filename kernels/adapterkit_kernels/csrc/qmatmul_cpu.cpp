// y (M, N) = x (M, K) @ W^T (+ add) for a blockwise-quantized W, decoded in registers, on CPU.
//
// For few rows of x (decoding, small batches) the work is reading W: dequantizing it to a dense
// fp32 copy and calling a GEMM writes and reads 8x (4-bit) the bytes of the codes. Here each output
// row j decodes its codes once, 16 at a time, and multiplies them with every row of x while they
// are in registers. Layout (formats.py): W flattened row-major, blocks of `block` elements, one
// absmax each; 4-bit: two codes a byte, the even element in the high nibble, level = table[code];
// 8-bit: level = q / 127. W[j, k] = level * absmax, exactly the reference's fp32 product (built
// with -ffp-contract=off so no FMA fuses it). Needs K % block == 0 (blocks never straddle rows).
// The 4-bit path first deinterleaves x:
//   xe (M, K/2) = x[:, 0::2] (the high nibbles' inputs), xo (M, K/2) = x[:, 1::2].
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
constexpr int kTile = 8;          // rows of x per pass over a row of W

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

struct Rows {      // the rows of x one pass over a row of W reads
  const float* a;  // 4-bit: xe; 8-bit: x            (rows of stride lda)
  const float* b;  // 4-bit: xo; 8-bit: unused
  int64_t lda;
  int rows;
};

#if defined(__AVX512F__)
inline float sum16(__m512 v) { return _mm512_reduce_add_ps(v); }

// sums[m] = sum_k W[j, k] x[m, k] for one row j of a 4-bit W: its ``half`` = K / 2 bytes of codes,
// whose first weight has flat index ``first`` = j K (so block (first + i) >> shift holds weight i; block = 2^shift).
void row4(const uint8_t* codes, int64_t half, int shift, int64_t first, const Scales& sc, __m512 table,
          const Rows& x, float* sums) {
  __m512 acc[kTile];
  for (int m = 0; m < kTile; ++m) acc[m] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi32(15);
  for (int64_t c = 0; c < half; c += 16) {  // 16 bytes = 32 weights, inside one block (block >= 32)
    const __m512 s = _mm512_set1_ps(sc((first + 2 * c) >> shift));
    const __m512i byte = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + c)));
    const __m512 wh = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(byte, 4), table), s);
    const __m512 wl = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(byte, low4), table), s);
    for (int m = 0; m < x.rows; ++m) {
      acc[m] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(x.a + m * x.lda + c), acc[m]);
      acc[m] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(x.b + m * x.lda + c), acc[m]);
    }
  }
  for (int m = 0; m < x.rows; ++m) sums[m] = sum16(acc[m]);
}

// The same for one row (``k`` weights) of an 8-bit W.
void row8(const int8_t* codes, int64_t k, int shift, int64_t first, const Scales& sc, const Rows& x, float* sums) {
  __m512 acc[kTile];
  for (int m = 0; m < kTile; ++m) acc[m] = _mm512_setzero_ps();
  const __m512 inv = _mm512_set1_ps(1.0f / 127.0f);
  for (int64_t c = 0; c < k; c += 16) {  // 16 weights, inside one block
    const __m512 s = _mm512_set1_ps(sc((first + c) >> shift));
    const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + c)));
    const __m512 w = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q), inv), s);
    for (int m = 0; m < x.rows; ++m) acc[m] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x.a + m * x.lda + c), acc[m]);
  }
  for (int m = 0; m < x.rows; ++m) sums[m] = sum16(acc[m]);
}
#else
// Portable loops (no AVX-512): the same sums, one weight at a time.
void row4(const uint8_t* codes, int64_t half, int shift, int64_t first, const Scales& sc, const float* table,
          const Rows& x, float* sums) {
  for (int m = 0; m < x.rows; ++m) sums[m] = 0.f;
  for (int64_t c = 0; c < half; ++c) {
    const float s = sc((first + 2 * c) >> shift);
    const float wh = table[codes[c] >> 4] * s, wl = table[codes[c] & 15] * s;
    for (int m = 0; m < x.rows; ++m) sums[m] += wh * x.a[m * x.lda + c] + wl * x.b[m * x.lda + c];
  }
}

void row8(const int8_t* codes, int64_t k, int shift, int64_t first, const Scales& sc, const Rows& x, float* sums) {
  for (int m = 0; m < x.rows; ++m) sums[m] = 0.f;
  for (int64_t c = 0; c < k; ++c) {
    const float w = (static_cast<float>(codes[c]) * (1.0f / 127.0f)) * sc((first + c) >> shift);
    for (int m = 0; m < x.rows; ++m) sums[m] += w * x.a[m * x.lda + c];
  }
}
#endif

Scales scales_of(const torch::Tensor& absmax, const c10::optional<torch::Tensor>& nested,
                 const c10::optional<torch::Tensor>& offset, const c10::optional<torch::Tensor>& levels) {
  Scales sc;
  if (nested.has_value()) {
    sc.qabsmax = absmax.data_ptr<uint8_t>();
    sc.nested = nested->data_ptr<float>();
    sc.levels = levels->data_ptr<float>();
    sc.offset = offset->item<float>();
  } else {
    sc.absmax = absmax.data_ptr<float>();
  }
  return sc;
}

}  // namespace

// x (M, K) fp32; table: the 16 fp32 levels (4-bit) or empty (8-bit). out: (M, N) fp32, added to in place.
// lora_a (r, K), lora_b (N, r) fp32, given together: also add scale * (x @ A^T) @ B^T (decoding with LoRA:
// h = scale * x @ A^T (M, r) first, then each output adds its row of B against h).
void qmatmul_add(torch::Tensor x, torch::Tensor codes, torch::Tensor table, torch::Tensor absmax,
                 c10::optional<torch::Tensor> nested, c10::optional<torch::Tensor> offset,
                 c10::optional<torch::Tensor> levels, int64_t block, torch::Tensor out,
                 c10::optional<torch::Tensor> lora_a, c10::optional<torch::Tensor> lora_b, double scale) {
  const bool four = table.numel() == 16;
  const int64_t k = x.size(1), n = out.size(1), rows = out.size(0), width = four ? k / 2 : k;
  TORCH_CHECK(k % block == 0 && block >= 32 && (block & (block - 1)) == 0,
              "qmatmul_cpu: K must be a multiple of the block, a power of two >= 32");
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous() && x.size(0) == rows, "qmatmul_cpu: bad x / out");
  const Scales sc = scales_of(absmax, nested, offset, levels);
  const int shift = __builtin_ctzll(block);  // blocks are powers of two (formats.BLOCKS)
  const float* a = x.data_ptr<float>();
  const float* b = nullptr;
  std::vector<float> split;  // 4-bit: xe then xo
  if (four) {
    split.resize(rows * k);
    float* xe = split.data();
    float* xo = xe + rows * width;
    for (int64_t i = 0; i < rows * width; ++i) {
      xe[i] = a[2 * i];
      xo[i] = a[2 * i + 1];
    }
    a = xe;
    b = xo;
  }
  const int64_t r = lora_a.has_value() ? lora_a->size(0) : 0;
  std::vector<float> h(rows * r);  // (M, r)
  const float* lb = nullptr;
  if (r) {
    TORCH_CHECK(lora_a->is_contiguous() && lora_b->is_contiguous() && lora_a->size(1) == k &&
                    lora_b->size(0) == n && lora_b->size(1) == r,
                "qmatmul_cpu: bad LoRA factors");
    const float* la = lora_a->data_ptr<float>();
    const float* xs = x.data_ptr<float>();
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t q = 0; q < r; ++q) {
        float acc = 0.f;
        for (int64_t i = 0; i < k; ++i) acc += xs[m * k + i] * la[q * k + i];
        h[m * r + q] = acc * static_cast<float>(scale);
      }
    lb = lora_b->data_ptr<float>();
  }
  const float* tab = four ? table.data_ptr<float>() : nullptr;
  float* y = out.data_ptr<float>();
  const uint8_t* c4 = four ? codes.data_ptr<uint8_t>() : nullptr;
  const int8_t* c8 = four ? nullptr : codes.data_ptr<int8_t>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
#if defined(__AVX512F__)
    const __m512 table_v = four ? _mm512_loadu_ps(tab) : _mm512_setzero_ps();
#endif
    float sums[kTile];
    for (int64_t m0 = 0; m0 < rows; m0 += kTile) {
      const Rows tile{a + m0 * width, b ? b + m0 * width : nullptr, width, static_cast<int>(std::min<int64_t>(kTile, rows - m0))};
      for (int64_t j = begin; j < end; ++j) {  // a whole row of W streams past the tile of x
#if defined(__AVX512F__)
        if (four) row4(c4 + j * width, width, shift, j * k, sc, table_v, tile, sums);
#else
        if (four) row4(c4 + j * width, width, shift, j * k, sc, tab, tile, sums);
#endif
        else row8(c8 + j * k, k, shift, j * k, sc, tile, sums);
        for (int m = 0; m < tile.rows; ++m) {
          float lora = 0.f;
          for (int64_t q = 0; q < r; ++q) lora += h[(m0 + m) * r + q] * lb[j * r + q];
          y[(m0 + m) * n + j] += sums[m] + lora;
        }
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qmatmul_add", &qmatmul_add, "out += x @ W^T (+ scale x A^T B^T) for a blockwise-quantized W (see above)");
  m.def("vectorized", &vectorized, "whether this build decodes with AVX-512 (else portable loops)");
}
