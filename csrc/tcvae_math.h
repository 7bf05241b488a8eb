// Helpers shared by the CPU (tcvae_cpu.cpp) and CUDA (tcvae_cuda.cu) kernels: constants, the base-2
// pre-scaling of a component, the structured log weights (LogWeights), the accumulation dtype, the
// 2^x polynomial and exp2_fma. The math: tcvae_kernels/reference.py; the design: docs/kernels.md.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TCVAE_HD __host__ __device__ __forceinline__
#else
#define TCVAE_HD inline
#endif

namespace tcvae {

constexpr double kLog2Pi = 1.83787706640934548356;  // log(2π)
constexpr double kLog2E = 1.44269504088896340736;   // log2(e): kernels work in base 2, e^x = 2^(x·log2 e)
constexpr double kLn2 = 0.69314718055994530942;     // ln(2)

// Coefficients of p(f) ≈ 2^f on [-0.5, 0.5], degree 6 (weighted least squares on Chebyshev nodes):
// relative error 1.9e-9 in exact arithmetic, < 1e-7 (under 1 ulp) evaluated by Horner in float32.
// (scalars: usable in device code, which cannot read a host constexpr array)
constexpr float kExp2C0 = 1.0f;
constexpr float kExp2C1 = 0.6931471824645996f;
constexpr float kExp2C2 = 0.24022646248340607f;
constexpr float kExp2C3 = 0.05550329014658928f;
constexpr float kExp2C4 = 0.009618519805371761f;
constexpr float kExp2C5 = 0.0013399859890341759f;
constexpr float kExp2C6 = 0.00015337577497120947f;
constexpr float kExp2Poly[7] = {kExp2C0, kExp2C1, kExp2C2, kExp2C3, kExp2C4, kExp2C5, kExp2C6};

// Base-2 exponent floor: 2^x for x below it is exactly 0. float: at x = -127 the kernels' 2^n scale
// has a zero exponent field, i.e. is +0 (results between 2^-127 and 2^-126 are denormal and flushed
// by the FTZ mode the CPU kernel sets), so exp never takes a denormal slow path; double: 2^-1100
// rounds to 0. Terms dropped this way are below 2^-126 relative to the largest term (which is 1).
template <typename T>
struct Exp2Floor;
template <>
struct Exp2Floor<float> {
  static constexpr float value = -127.0f;
};
template <>
struct Exp2Floor<double> {
  static constexpr double value = -1100.0;
};

// Base-2 coefficients of a component, x2 = l·log2 e = c2 - (z - mu)^2·h2 (host-side preparation of
// every C++/CUDA kernel; Python's Triton host code states the same in triton_kernels._prepare):
//   h2 = 0.5·exp(-logvar)·log2 e,   c2 = -0.5·(logvar + log 2π)·log2 e
// evaluated in double and rounded once to the compute dtype by the caller. Generic over the
// argument — a double, or an ATen double tensor (exp found by argument-dependent lookup) — so the
// CPU kernel's loop and the fused kernels' tensor code share this one statement.
template <typename T>
auto log2_precision(const T& logvar) {
  using std::exp;
  return (0.5 * kLog2E) * exp(-logvar);
}

template <typename T>
auto log2_norm_const(const T& logvar) {
  return (-0.5 * kLog2E) * (logvar + kLog2Pi);
}

// The posterior family of the components (the ops' `str family` argument; Python:
// tcvae_kernels.reference.FAMILIES). Each kernel is instantiated per family; the family changes the
// base-2 coefficients, the penalty pen(u) in x2 = c2 - pen(u) and its derivative:
//   Normal:  l = -0.5·((z - mu)²·e^-logvar + logvar + log 2π)
//            h2 = 0.5·e^-logvar·log2 e, c2 = -0.5·(logvar + log 2π)·log2 e, x2 = c2 - (z - mu)²·h2
//   Laplace: l = -|z - mu|·e^-b - b - log 2   (b: the log-scale)
//            h2 = e^-b·log2 e,          c2 = -(b + ln 2)·log2 e,          x2 = c2 - |z - mu|·h2
// d x2 / dz = -kSlope·slope(z - mu)·h2 (slope: z - mu, or sign(z - mu) with the subgradient 0 at
// z = mu) and d x2 / d(logvar or b) = pen·h2 - kConst·log2 e.
enum class Family : int { Normal = 0, Laplace = 1 };

template <Family F>
struct FamilyTraits;

template <>
struct FamilyTraits<Family::Normal> {
  static constexpr double kSlope = 2.0;
  static constexpr double kConst = 0.5;
  template <typename X>
  static auto h2(const X& logvar) { return log2_precision(logvar); }
  template <typename X>
  static auto c2(const X& logvar) { return log2_norm_const(logvar); }
};

template <>
struct FamilyTraits<Family::Laplace> {
  static constexpr double kSlope = 1.0;
  static constexpr double kConst = 1.0;
  template <typename X>
  static auto h2(const X& logscale) {
    using std::exp;
    return kLog2E * exp(-logscale);
  }
  template <typename X>
  static auto c2(const X& logscale) { return (-kLog2E) * (logscale + kLn2); }
};

// From an op's `family` argument (host only).
inline Family parse_family(const std::string& name) {
  if (name == "normal") return Family::Normal;
  if (name == "laplace") return Family::Laplace;
  throw std::invalid_argument("tcvae: family must be 'normal' or 'laplace', got '" + name + "'");
}

// Calls f(std::integral_constant<Family, F>{}) for the run-time family (host only).
template <class Fn>
auto dispatch_family(Family family, Fn&& f) {
  if (family == Family::Laplace) return f(std::integral_constant<Family, Family::Laplace>{});
  return f(std::integral_constant<Family, Family::Normal>{});
}

// The estimator's structured log weights, as every op receives them (the ops' `float[] weights,
// int offset` arguments; Python: tcvae_kernels.estimators.LogWeights.op_args): weights =
// [w_self, w_next, w_other], offset = s_i - i. Every kernel factors w_other out of its sums
// (log q = w_other + ln2·log2 sum 2^(...)) and adds the base-2 corrections at the self and next
// components only.
struct LogWeights {
  double self, next, other;
  int64_t offset;
  double d_self2() const { return (self - other) * kLog2E; }  // (w_self - w_other)·log2 e
  double d_next2() const { return (next - other) * kLog2E; }  // (w_next - w_other)·log2 e
};

// From an op's (weights, offset) arguments: any sequence with size() and operator[] (host only).
template <class Seq>
LogWeights parse_log_weights(const Seq& w, int64_t offset) {
  if (w.size() != 3)
    throw std::invalid_argument("tcvae: weights must be [w_self, w_next, w_other] (tcvae_kernels.LogWeights.op_args)");
  return {double(w[0]), double(w[1]), double(w[2]), offset};
}

// How many leading components get d/dmu, d/dlogvar: an op's grad_components (-1: all K; the rest,
// e.g. a component bank's rows, only enter d/dz) checked against K (host only).
inline int64_t grad_component_count(int64_t grad_components, int64_t k) {
  if (grad_components < -1 || grad_components > k)
    throw std::invalid_argument("tcvae: grad_components must be -1 or in [0, K=" + std::to_string(k) + "], got " +
                                std::to_string(grad_components));
  return grad_components < 0 ? k : grad_components;
}

// The accumulation dtype (Python: tcvae_kernels._validation.accumulation_dtype): double stays
// double, every other floating type accumulates in float. Templated on the enum (c10::ScalarType)
// so that this header needs no ATen.
template <class ScalarType>
ScalarType accumulation_type(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// Component index carrying the self weight of query i, or -1 when query i has none.
TCVAE_HD int64_t self_index(int64_t i, int64_t offset, int64_t num_components) {
  const int64_t s = i + offset;
  return (s >= 0 && s < num_components) ? s : -1;
}

// Component index carrying the stratum ("next") weight: (s + 1) mod K, or -1.
TCVAE_HD int64_t next_index(int64_t self, int64_t num_components) {
  return self < 0 ? -1 : (self + 1 == num_components ? 0 : self + 1);
}

// Precision-generic elementary functions that compile for host and device.
TCVAE_HD float fma_(float a, float b, float c) { return fmaf(a, b, c); }
TCVAE_HD double fma_(double a, double b, double c) { return fma(a, b, c); }
TCVAE_HD float exp2_(float x) { return exp2f(x); }
TCVAE_HD double exp2_(double x) { return exp2(x); }
TCVAE_HD float log2_(float x) { return log2f(x); }
TCVAE_HD double log2_(double x) { return log2(x); }
TCVAE_HD float abs_(float x) { return fabsf(x); }
TCVAE_HD double abs_(double x) { return fabs(x); }

// The fused kernels' per-(query, component, dimension) terms, from the layouts' (s, p, c2):
//   Normal:  p = -mu·s, s = sqrt(h2):  u = s·z + p (one FMA),  pen = u²        (= (z - mu)²·h2)
//   Laplace: p = mu,    s = h2:        u = z - mu (exact 0 at z = mu),  pen = |u|·s
// x2 = c2 - pen; d x2 / dz = -kSlope·slope(u)·s. Every kernel of one device evaluates these same
// expressions, so x2 and the joint sum Sq -= pen are recomputed bitwise.
template <Family F, typename T>
TCVAE_HD T diff_term(T s, T z, T p) {
  if constexpr (F == Family::Laplace) return z - p;
  else return fma_(s, z, p);
}

// acc - pen(u)
template <Family F, typename T>
TCVAE_HD T minus_pen(T u, T s, T acc) {
  if constexpr (F == Family::Laplace) return fma_(-abs_(u), s, acc);
  else return fma_(-u, u, acc);
}

// pen(u) - c: the logvar / log-scale term of the backward.
template <Family F, typename T>
TCVAE_HD T pen_minus(T u, T s, T c) {
  if constexpr (F == Family::Laplace) return fma_(abs_(u), s, -c);
  else return fma_(u, u, -c);
}

// d pen / du up to kSlope and s: u (Normal) or sign(u), 0 at u = 0 (Laplace's subgradient; NaN
// gives 0, the NaN reaches the gradient through the softmax weight instead).
template <Family F, typename T>
TCVAE_HD T slope(T u) {
  if constexpr (F == Family::Laplace) {
#if defined(__CUDA_ARCH__)
    // float on the GPU (flush-to-zero): sat(u·2^125 + 1/2) is 1 for u > 0, 0 for u < 0 and 1/2 at
    // u = 0 (a denormal u is flushed to 0), so 2·sat - 1 = sign(u): 2 FFMAs (one .SAT) instead of
    // two compares, two conversions and an add (gpu-report: fewer instructions and registers)
    if constexpr (std::is_same<T, float>::value) return fmaf(__saturatef(fmaf(u, 0x1p125f, 0.5f)), 2.0f, -1.0f);
#endif
    return T(u > T(0)) - T(u < T(0));
  } else {
    return u;
  }
}

// 2^x on the FMA pipe (GPU kernels: a share of the exponentials off the special-function unit,
// as FlashAttention-4 does). Cody–Waite split x = n + f, n = rint(x), f in [-0.5, 0.5] (exact);
// 2^f by the degree-6 polynomial kExp2Poly (Horner, under 1 ulp); times 2^n built in the exponent
// field (exact while 2^n is normal). 12 instructions: max, 3 adds, a shift, 6 FMAs, a multiply.
// Contract (tests/kernels/test_exp2_fma.py, every float32 input): at most 2 ulp from the correctly rounded
// 2^x for x in [-126, 64) (the kernels feed x2 < 64); for x < -126 a value in [0, 2^-126), which
// flush-to-zero arithmetic (the GPU build's) reads as 0, as MUFU.EX2 returns; -inf gives such a
// value; NaN propagates.
TCVAE_HD float max_nan(float a, float b) {  // max that propagates NaN
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return (a != a || a > b) ? a : b;
#endif
}

TCVAE_HD double max_nan(double a, double b) { return (a != a || a > b) ? a : b; }

TCVAE_HD float exp2_fma(float x) {
  constexpr float kShifter = 12583039.0f;  // 1.5·2^23 + 127: t's low mantissa bits hold n + 127
  const float xc = max_nan(x, -126.5f);    // n >= -126: the scale 2^n stays a normal number
  const float t = xc + kShifter;           // rounds xc to an integer (round to nearest even)
  const float f = xc - (t - kShifter);     // exact
  float p = kExp2C6;
  p = fma_(p, f, kExp2C5);
  p = fma_(p, f, kExp2C4);
  p = fma_(p, f, kExp2C3);
  p = fma_(p, f, kExp2C2);
  p = fma_(p, f, kExp2C1);
  p = fma_(p, f, kExp2C0);
  uint32_t bits;  // 2^n = (n + 127) << 23: the shift drops t's sign, exponent and the 1.5·2^23 bit
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(t) << 23;
  return p * __uint_as_float(bits);
#else
  std::memcpy(&bits, &t, sizeof bits);
  bits <<= 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
#endif
}

// x2 = c2 - diff^2·h2 with one rounding after the product (the expression every kernel of one
// device evaluates identically, so sums of x2 are recomputed bitwise in the backward).
template <typename T>
TCVAE_HD T log2_density(T z, T mu, T h2, T c2) {
  const T diff = z - mu;
  return fma_(-(diff * diff), h2, c2);
}

// Online logsumexp in base 2: value = m + log2(s). NaN propagates; all -inf gives (-inf, 0).
template <typename T>
struct OnlineLse2 {
  T m = -std::numeric_limits<T>::infinity();
  T s = T(0);

  TCVAE_HD void add(T x) {
    if (x == -std::numeric_limits<T>::infinity()) return;  // nothing to add (keeps NaN out)
    if (x > m) {
      s = s * exp2_(m - x) + T(1);  // m = -inf: 0·0 + 1
      m = x;
    } else {
      s = s + exp2_(x - m);  // also the NaN path: NaN > m is false
    }
  }

  // n values at once (GPU kernels): one maximum, one rescale, n exponentials. Same results as n
  // add() calls up to rounding: NaN propagates; all -inf leaves (-inf, 0).
  template <int N>
  TCVAE_HD void add_tile(const T (&x)[N]) {
    T mt = m;
#pragma unroll
    for (int n = 0; n < N; ++n) mt = max_nan(x[n], mt);
    const T ms = mt == -std::numeric_limits<T>::infinity() ? T(0) : mt;  // all -inf: shift by 0
    T sum = s * exp2_(m - ms);
#pragma unroll
    for (int n = 0; n < N; ++n) sum += exp2_(x[n] - ms);
    m = mt;
    s = sum;
  }
};

}  // namespace tcvae
