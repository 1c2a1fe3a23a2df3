// IEEE 754 binary16 <-> binary32 conversions, exact and branch-light so loops vectorise.
//
// Written out instead of `_Float16` because without -mf16c (which we do not assume: the
// wheel must run on any x86-64) GCC turns each `_Float16` conversion into a libgcc call.
// float -> half rounds to nearest, ties to even, like numpy's astype(np.float16);
// both directions handle subnormals, infinities and NaN. After F. Giesen's public-domain
// "half <-> float" routines. Requires IEEE round-to-nearest float arithmetic: never build
// this with -ffast-math.
#pragma once

#include <cstdint>
#include <cstring>

namespace phaseedge {

inline std::uint32_t f32_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float bits_f32(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// Both conversions compute every case and select the result with bit masks (GCC does
// not if-convert the nested selects by itself), so the loops that call them vectorise
// with plain SSE2.
inline std::uint32_t select(bool cond, std::uint32_t a, std::uint32_t b) {
    const std::uint32_t m = 0u - static_cast<std::uint32_t>(cond);
    return (a & m) | (b & ~m);
}

inline std::uint16_t float_to_half(float value) {
    const std::uint32_t f32_infty = 255u << 23;
    const std::uint32_t f16_max = (127u + 16u) << 23;        // first float that overflows to inf
    const std::uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    std::uint32_t u = f32_bits(value);
    const std::uint32_t sign = u & 0x80000000u;
    u ^= sign;
    // inf / NaN (NaN -> quiet NaN)
    const std::uint32_t special = select(u > f32_infty, 0x7e00u, 0x7c00u);
    // subnormal or zero half: adding the magic number lines the 10 mantissa bits up at the
    // bottom of the float, and the FPU's own rounding is round-to-nearest-even
    const std::uint32_t sub = f32_bits(bits_f32(u) + bits_f32(denorm_magic)) - denorm_magic;
    // normal half: rebias the exponent, round to nearest with ties to even
    const std::uint32_t mant_odd = (u >> 13) & 1u;
    const std::uint32_t norm = (u + (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd) >> 13;
    const std::uint32_t o = select(u >= f16_max, special, select(u < (113u << 23), sub, norm));
    return static_cast<std::uint16_t>(o | (sign >> 16));
}

inline float half_to_float(std::uint16_t h) {
    const std::uint32_t shifted_exp = 0x7c00u << 13;
    const std::uint32_t hb = h;
    const std::uint32_t u = ((hb & 0x7fffu) << 13) + ((127u - 15u) << 23);
    const std::uint32_t exp = shifted_exp & (hb << 13);
    const std::uint32_t special = u + ((128u - 16u) << 23);                               // inf / NaN
    const std::uint32_t sub = f32_bits(bits_f32(u + (1u << 23)) - bits_f32(113u << 23));  // renormalise
    const std::uint32_t o = select(exp == shifted_exp, special, select(exp == 0, sub, u));
    return bits_f32(o | ((hb & 0x8000u) << 16));
}

// Element loads/stores used by the templated kernels: float16 travels as its bits.
struct half_t {
    std::uint16_t bits;
};

inline float to_float(float v) { return v; }
inline float to_float(half_t v) { return half_to_float(v.bits); }
inline float to_float(std::uint8_t v) { return static_cast<float>(v); }
inline float to_float(std::uint16_t v) { return static_cast<float>(v); }

inline void store(float* dst, float v) { *dst = v; }
inline void store(half_t* dst, float v) { dst->bits = float_to_half(v); }

}  // namespace phaseedge
