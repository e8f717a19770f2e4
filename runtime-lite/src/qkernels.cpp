// Kernel dispatch: which ISAs this build has and the running CPU supports, and the KERF_ISA
// override (qkernels.h).
#include <cstdlib>
#include <cstring>

#include "qkernels_impl.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // arch/arm64/include/uapi/asm/hwcap.h
#endif
#endif

namespace kerf::rt {

namespace {
struct IsaName {
  Isa isa;
  const char* name;
};
constexpr IsaName kIsaNames[] = {{Isa::kScalar, "scalar"},
                                 {Isa::kAvx2, "avx2"},
                                 {Isa::kAvx512Vnni, "avx512vnni"},
                                 {Isa::kNeon, "neon"},
                                 {Isa::kNeonDot, "neondot"}};
}  // namespace

const char* isa_name(Isa isa) {
  for (const IsaName& n : kIsaNames)
    if (n.isa == isa) return n.name;
  return "?";
}

bool parse_isa(const char* name, Isa* out) {
  for (const IsaName& n : kIsaNames)
    if (name && std::strcmp(name, n.name) == 0) {
      *out = n.isa;
      return true;
    }
  return false;
}

const QKernels* qkernels(Isa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();  // __builtin_cpu_supports also checks that the OS saves the vector state
  // F16C from CPUID leaf 1 (clang's __builtin_cpu_supports does not know "f16c").
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
  switch (isa) {
    case Isa::kScalar: return &qk::kScalar;
#if defined(__x86_64__)
    case Isa::kAvx2: return avx2 ? &qk::kAvx2 : nullptr;
    case Isa::kAvx512Vnni: return avx512 ? &qk::kAvx512Vnni : nullptr;
#elif defined(__aarch64__)
    case Isa::kNeon: return &qk::kNeon;  // Advanced SIMD is mandatory on AArch64
    case Isa::kNeonDot: return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) ? &qk::kNeonDot : nullptr;
#endif
    default: return nullptr;
  }
}

const QKernels* qkernels_best() {
  const char* env = std::getenv("KERF_ISA");
  if (env && *env) {
    Isa isa;
    return parse_isa(env, &isa) ? qkernels(isa) : nullptr;
  }
  for (Isa isa : {Isa::kAvx512Vnni, Isa::kAvx2, Isa::kNeonDot, Isa::kNeon})
    if (const QKernels* k = qkernels(isa)) return k;
  return qkernels(Isa::kScalar);
}

}  // namespace kerf::rt
