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

inline std::uint16_t float_to_half(float value) {
    const std::uint32_t f32_infty = 255u << 23;
    const std::uint32_t f16_max = (127u + 16u) << 23;        // first float that overflows to inf
    const std::uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    std::uint32_t u = f32_bits(value);
    const std::uint32_t sign = u & 0x80000000u;
    u ^= sign;
    std::uint16_t o;
    if (u >= f16_max) {
        o = (u > f32_infty) ? 0x7e00 : 0x7c00;                 // NaN -> quiet NaN, else inf
    } else if (u < (113u << 23)) {
        // Subnormal or zero half: adding the magic number lines the 10 mantissa bits up at
        // the bottom of the float, and the FPU's own rounding is round-to-nearest-even.
        o = static_cast<std::uint16_t>(f32_bits(bits_f32(u) + bits_f32(denorm_magic)) - denorm_magic);
    } else {
        const std::uint32_t mant_odd = (u >> 13) & 1u;
        u += (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu;  // rebias exponent, round
        u += mant_odd;                                                 // ties to even
        o = static_cast<std::uint16_t>(u >> 13);
    }
    return static_cast<std::uint16_t>(o | (sign >> 16));
}

inline float half_to_float(std::uint16_t h) {
    const std::uint32_t shifted_exp = 0x7c00u << 13;
    std::uint32_t u = (static_cast<std::uint32_t>(h) & 0x7fffu) << 13;
    const std::uint32_t exp = shifted_exp & u;
    u += (127u - 15u) << 23;
    float f;
    if (exp == shifted_exp) {                 // inf / NaN
        f = bits_f32(u + ((128u - 16u) << 23));
    } else if (exp == 0) {                    // zero / subnormal: renormalise
        f = bits_f32(u + (1u << 23)) - bits_f32(113u << 23);
    } else {
        f = bits_f32(u);
    }
    return bits_f32(f32_bits(f) | ((static_cast<std::uint32_t>(h) & 0x8000u) << 16));
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
